"""Weighted k-nearest-neighbour classification on frozen features (DINO, Caron et al. 2021).

Protocol (DINO ``eval_knn.py``): L2-normalise train and test features, take the k training
features with the highest cosine similarity to each test feature, let each neighbour j vote
for its class with weight ``exp(s_j / T)`` (T = 0.07), and rank the classes by their summed
votes:

    score_c(x) = sum_{j in N_k(x)} 1[y_j = c] * exp(cos(x, x_j) / T)

Top-1 / top-5 accuracy are read off that ranking. One neighbour search at ``max(ks)`` serves
every k (the neighbours of a smaller k are a prefix of the sorted list).

Ties are ranked against the query (see :func:`topk_hits`), so a class with the same score as
the true class counts as ranked above it: degenerate features cannot score by accident.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)


def topk_hits(scores: Tensor, targets: Tensor, ks: Sequence[int]) -> dict[int, int]:
    """Number of rows whose target class is among the ``k`` highest scores, for each k.

    scores: (B, C); targets: (B,) in [0, C). The rank of the target is the number of OTHER
    classes whose score is >= the target's score (ties count against the target, a
    deterministic and pessimistic rule), and a row is a hit at k when rank < k.
    Shared by k-NN, zero-shot and linear-probe evaluation so all of them rank the same way.
    """
    target_scores = scores.gather(1, targets[:, None])  # (B, 1)
    # ">=" includes the target itself, hence the -1.
    rank = (scores >= target_scores).sum(dim=1) - 1
    return {k: int((rank < k).sum().item()) for k in ks}


def _validate(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    ks: Sequence[int],
    temperature: float,
    batch_size: int,
) -> None:
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            f"features must be 2-D (N, D); got train {tuple(train_features.shape)} and test "
            f"{tuple(test_features.shape)}. Flatten or pool the backbone output first."
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train and test feature dims differ: {train_features.shape[1]} vs {test_features.shape[1]}; "
            "extract both with the same backbone and pooling."
        )
    if train_labels.shape != (train_features.shape[0],) or test_labels.shape != (test_features.shape[0],):
        raise ValueError(
            f"labels must be 1-D with one entry per feature row; got train_labels {tuple(train_labels.shape)} "
            f"for {train_features.shape[0]} train rows and test_labels {tuple(test_labels.shape)} for "
            f"{test_features.shape[0]} test rows."
        )
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("k-NN needs at least one train and one test feature; got an empty set.")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    for name, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        if labels.dtype.is_floating_point:
            raise ValueError(f"{name} must be an integer tensor, got {labels.dtype}.")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"{name} must lie in [0, num_classes={num_classes}); found range "
                f"[{int(labels.min())}, {int(labels.max())}]. Check num_classes."
            )
    if len(ks) == 0 or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {list(ks)}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (DINO uses 0.07), got {temperature}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")


def _search_torch(train: Tensor, test: Tensor, k: int, batch_size: int) -> tuple[Tensor, Tensor]:
    """Exact top-k inner-product search by chunks of test rows. Returns (sims, indices), (M, k)."""
    sims, idx = [], []
    for start in range(0, test.shape[0], batch_size):
        chunk = test[start : start + batch_size] @ train.T  # (b, N)
        s, i = chunk.topk(k, dim=1, largest=True, sorted=True)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def _search_faiss(train: Tensor, test: Tensor, k: int, batch_size: int) -> tuple[Tensor, Tensor]:
    """Exact top-k inner-product search with faiss.IndexFlatIP (CPU). Returns (sims, indices)."""
    import faiss  # imported lazily: only this path needs it

    train_np = train.detach().float().cpu().contiguous().numpy()
    index = faiss.IndexFlatIP(train_np.shape[1])
    index.add(train_np)
    sims, idx = [], []
    for start in range(0, test.shape[0], batch_size):
        chunk = test[start : start + batch_size].detach().float().cpu().contiguous().numpy()
        s, i = index.search(chunk, k)
        sims.append(torch.from_numpy(s))
        idx.append(torch.from_numpy(i).long())
    return torch.cat(sims).to(test.device), torch.cat(idx).to(test.device)


@torch.no_grad()
def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    use_faiss: bool = True,
    batch_size: int = 1024,
) -> dict[int, dict[str, float]]:
    """DINO weighted k-NN accuracy.

    Args:
        train_features: (N, D) bank features (any scale; L2-normalised here).
        train_labels: (N,) integer labels in [0, num_classes).
        test_features: (M, D) query features.
        test_labels: (M,) integer labels in [0, num_classes).
        num_classes: C.
        ks: neighbour counts to report. A k larger than N is clamped to N and a warning is
            logged; the result stays keyed by the requested k.
        temperature: T in exp(cos / T).
        use_faiss: search with faiss.IndexFlatIP (exact, CPU); else torch.topk on chunks on the
            features' device. Both are exact searches; falls back to torch if faiss is missing.
        batch_size: test rows per similarity chunk (bounds memory to batch_size x N).

    Returns:
        ``{k: {"top1": %, "top5": %}}``. "top5" is top-min(5, C) accuracy (100 when C <= 5).
    """
    _validate(train_features, train_labels, test_features, test_labels, num_classes, ks, temperature, batch_size)
    n_train = train_features.shape[0]
    ks = [int(k) for k in ks]
    for k in ks:
        if k > n_train:
            logger.warning("k-NN: k=%d exceeds the %d training features; using k=%d (reported under k=%d).",
                           k, n_train, n_train, k)
    k_max = min(max(ks), n_train)

    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    if use_faiss:
        try:
            sims, idx = _search_faiss(train, test, k_max, batch_size)
        except ImportError:
            logger.warning("k-NN: faiss is not installed; falling back to the exact torch search.")
            sims, idx = _search_torch(train, test, k_max, batch_size)
    else:
        sims, idx = _search_torch(train, test, k_max, batch_size)

    train_labels = train_labels.to(idx.device).long()
    test_labels = test_labels.to(idx.device).long()
    top5 = min(5, num_classes)
    hits = {k: [0, 0] for k in ks}
    for start in range(0, test.shape[0], batch_size):
        s = sims[start : start + batch_size].double()  # exp(1/0.07) ~ 1.6e6: double keeps sums exact enough
        neighbour_labels = train_labels[idx[start : start + batch_size]]  # (b, k_max)
        targets = test_labels[start : start + batch_size]
        weights = (s / temperature).exp()
        for k in ks:
            kk = min(k, n_train)
            scores = torch.zeros(s.shape[0], num_classes, dtype=torch.float64, device=s.device)
            scores.scatter_add_(1, neighbour_labels[:, :kk], weights[:, :kk])
            h = topk_hits(scores, targets, (1, top5))
            hits[k][0] += h[1]
            hits[k][1] += h[top5]
    m = test.shape[0]
    return {k: {"top1": 100.0 * h1 / m, "top5": 100.0 * h5 / m} for k, (h1, h5) in hits.items()}
