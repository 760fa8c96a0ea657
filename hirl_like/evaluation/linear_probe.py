"""Linear probing on frozen features, DINOv2 style (Oquab et al. 2023, ``eval/linear.py``).

Many linear heads, one per learning rate, are trained at once on the same minibatches: the
weights are one stacked tensor W (H, D, C) and biases b (H, C), so one forward

    logits[h] = x @ W[h] + b[h]                     (H, B, C)

serves every head. The loss is the sum over heads of each head's mean cross-entropy; since the
heads share no parameters, d(sum)/d(W[h]) is exactly head h's own gradient. Each head is one
parameter group of ``torch.optim.SGD`` (momentum 0.9, dampening 0) with its own learning rate,
all following one per-iteration ``CosineAnnealingLR``: lr_h(t) = lr_h * (1 + cos(pi t / T)) / 2.

Model selection never sees the test set: a stratified ``val_fraction`` of the TRAINING set is
held out, every head is fit on the rest, and the lr with the best held-out top-1 wins (ties go to
the earlier lr in ``learning_rates``). A fresh head is then retrained with that lr on the full
training set (more data, same recipe) and only that head is scored on the test set.

Features are standardised with the mean / std of the samples a head is fit on (DINOv2 does not,
but it makes one lr grid serve backbones whose feature scales differ by orders of magnitude).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.evaluation.knn import topk_hits

MOMENTUM = 0.9
INIT_STD = 0.01  # DINOv2 LinearClassifier: weight ~ N(0, 0.01^2), bias = 0


def stratified_split(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices 0..N-1 into (fit, val) keeping class proportions.

    Each class with n_c samples sends round(val_fraction * n_c) of them (but never all of them)
    to validation, chosen by a permutation seeded with ``seed``. Returns sorted index tensors.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    fit, val = [], []
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero(as_tuple=True)[0]
        members = members[torch.randperm(members.numel(), generator=gen)]
        n_val = min(int(round(val_fraction * members.numel())), members.numel() - 1)
        val.append(members[:n_val])
        fit.append(members[n_val:])
    return torch.cat(fit).sort().values, torch.cat(val).sort().values


def _standardise(fit_x: Tensor, *others: Tensor) -> list[Tensor]:
    """(x - mean) / std with the statistics of ``fit_x`` applied to every tensor given."""
    mean = fit_x.mean(dim=0, keepdim=True)
    std = fit_x.std(dim=0, keepdim=True).clamp_min(1e-6)  # constant dims stay finite
    return [(t - mean) / std for t in (fit_x, *others)]


def train_linear_heads(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    learning_rates: Sequence[float],
    epochs: int,
    batch_size: int,
    weight_decay: float,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Train H = len(learning_rates) linear heads at once on (N, D) features ``x``, labels ``y``.

    Every head starts from the same seeded initialisation and sees the same minibatches, so the
    learning rate is the only difference between heads: one ``torch.optim.SGD`` parameter group
    per head (momentum 0.9, ``weight_decay`` on weights and biases) and one
    ``CosineAnnealingLR`` over all T iterations, stepped once per minibatch. The global RNG is
    not used. Returns W (H, D, C) and b (H, C).
    """
    n, d = x.shape
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(d, num_classes, generator=gen) * INIT_STD
    weights = [nn.Parameter(w0.clone().to(x.device)) for _ in learning_rates]  # (D, C) each
    biases = [nn.Parameter(torch.zeros(num_classes, device=x.device)) for _ in learning_rates]  # (C,) each
    optimizer = torch.optim.SGD(
        [{"params": [w, b], "lr": float(lr)} for w, b, lr in zip(weights, biases, learning_rates)],
        lr=float(learning_rates[0]), momentum=MOMENTUM, weight_decay=weight_decay,
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * math.ceil(n / batch_size))
    h = len(learning_rates)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            logits = torch.einsum("bd,hdc->hbc", xb, torch.stack(weights)) + torch.stack(biases)[:, None, :]  # (H, B, C)
            # Sum of per-head means: each head gets exactly its own cross-entropy gradient.
            loss = F.cross_entropy(logits.reshape(-1, num_classes), yb.repeat(h), reduction="sum") / xb.shape[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return torch.stack(weights).detach(), torch.stack(biases).detach()


@torch.no_grad()
def _head_hits(
    weight: Tensor, bias: Tensor, x: Tensor, y: Tensor, ks: Sequence[int], chunk: int = 4096
) -> list[dict[int, int]]:
    """Per head, {k: number of rows of x whose label is in that head's top-k}."""
    hits = [dict.fromkeys(ks, 0) for _ in range(weight.shape[0])]
    for start in range(0, x.shape[0], chunk):
        xb, yb = x[start : start + chunk], y[start : start + chunk]
        logits = torch.einsum("bd,hdc->hbc", xb, weight) + bias[:, None, :]
        for head in range(weight.shape[0]):
            for k, v in topk_hits(logits[head], yb, ks).items():
                hits[head][k] += v
    return hits


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    learning_rates: Sequence[float] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    epochs: int = 100,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    *,
    standardize: bool = True,
) -> dict:
    """Select the lr of a linear head on held-out training data, then report test accuracy.

    Args:
        train_features, train_labels: (N, D) frozen features and (N,) labels in [0, C).
        test_features, test_labels: (M, D) and (M,); used ONLY for the final report.
        num_classes: C.
        learning_rates: the grid; one head per value, all trained in one pass.
        epochs, batch_size, weight_decay: SGD recipe (momentum 0.9, per-iteration cosine lr).
        val_fraction: stratified share of the training set held out for lr selection. May be 0
            only with a single learning rate (nothing to select).
        seed: seeds the split, the initialisation and the minibatch order (fully deterministic).
        device: where the heads are trained.
        standardize: standardise features with the statistics of the data a head is fit on.

    Returns:
        {"best_lr": float, "val_top1": {lr: % on the held-out split}, "test_top1": %,
         "test_top5": % (top-min(5, C)), "train_size": samples the grid was fit on,
         "val_size": held-out samples, "final_train_size": N (the reported head is retrained
         on all training samples), "num_heads": H}
    """
    lrs = [float(lr) for lr in learning_rates]
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"features must be (N, D) and (M, D) with the same D; got {tuple(train_features.shape)} and "
            f"{tuple(test_features.shape)}."
        )
    if train_labels.shape != (train_features.shape[0],) or test_labels.shape != (test_features.shape[0],):
        raise ValueError("train_labels / test_labels must be 1-D with one label per feature row.")
    for name, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, num_classes={num_classes}); check num_classes.")
    if not lrs or any(lr <= 0 for lr in lrs):
        raise ValueError(f"learning_rates must be a non-empty list of positive floats, got {lrs}.")
    if len(set(lrs)) != len(lrs):
        raise ValueError(f"learning_rates contains duplicates: {lrs}.")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    if val_fraction == 0.0 and len(lrs) > 1:
        raise ValueError("val_fraction=0 leaves nothing to choose the learning rate on; use val_fraction > 0 "
                         "or pass a single learning rate. (The test set is never used for selection.)")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}.")

    x = train_features.detach().float().to(device)
    y = train_labels.detach().long().to(device)
    x_test = test_features.detach().float().to(device)
    y_test = test_labels.detach().long().to(device)
    recipe = dict(num_classes=num_classes, epochs=epochs, batch_size=batch_size, weight_decay=weight_decay, seed=seed)

    # 1) lr selection on a held-out split of the training set.
    val_top1: dict[float, float] = {}
    fit_size, val_size = x.shape[0], 0
    if len(lrs) > 1 or val_fraction > 0:
        fit_idx, val_idx = stratified_split(y, val_fraction, seed)
        fit_idx, val_idx = fit_idx.to(device), val_idx.to(device)
        fit_size, val_size = fit_idx.numel(), val_idx.numel()
        if val_size == 0:
            raise ValueError(f"val_fraction={val_fraction} holds out no sample of the {x.shape[0]} training "
                             "features; raise val_fraction.")
        x_fit, x_val = x[fit_idx], x[val_idx]
        if standardize:
            x_fit, x_val = _standardise(x_fit, x_val)
        w, b = train_linear_heads(x_fit, y[fit_idx], learning_rates=lrs, **recipe)
        hits = _head_hits(w, b, x_val, y[val_idx], (1,))
        val_top1 = {lr: 100.0 * h[1] / val_size for lr, h in zip(lrs, hits)}
    best_lr = max(lrs, key=lambda lr: val_top1.get(lr, 0.0)) if val_top1 else lrs[0]  # max keeps the first on ties

    # 2) retrain the chosen head on the whole training set, 3) score it once on the test set.
    x_all, x_eval = (_standardise(x, x_test) if standardize else (x, x_test))
    w, b = train_linear_heads(x_all, y, learning_rates=[best_lr], **recipe)
    top5 = min(5, num_classes)
    test_hits = _head_hits(w, b, x_eval, y_test, (1, top5))[0]
    m = max(x_test.shape[0], 1)
    return {
        "best_lr": best_lr,
        "val_top1": val_top1,
        "test_top1": 100.0 * test_hits[1] / m,
        "test_top5": 100.0 * test_hits[top5] / m,
        "train_size": fit_size,
        "val_size": val_size,
        "final_train_size": x.shape[0],
        "num_heads": len(lrs),
    }
