"""End-to-end fine-tuning of a pre-trained backbone with a new linear head, then top-1 / top-5.

The recipes (ViT: BEiT / iBOT; ResNet: SimCLR / BYOL) are :mod:`hirl_like.evaluation.finetune_recipe`;
the classifier and its layer-decay groups :mod:`hirl_like.evaluation.finetune_model`. One step:

    images, targets = mixup(images, labels)        # (B, 3, H, W), (B, C) soft targets; or labels (B,)
    loss = criterion(model(images), targets)       # SoftTargetCrossEntropy / LabelSmoothingCE / CE
    for g in groups: g.lr = lr(t) * g.lr_scale     # linear warm-up, then cosine, per iteration

with ``lr(t)`` peaking at ``base_lr * global_batch / 256``. The score is the model after the last
iteration on the test split; the test split never chooses anything (BEiT reports its best epoch
on the validation set, which would select on the data being scored).

Several processes: every rank trains on its shard of each epoch (DistributedDataParallel, the
toolbox's resumable sampler), and evaluation gathers every test image exactly once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from hirl_like.data.loader import build_eval_loader, build_train_loader
from hirl_like.evaluation.features import extract_features
from hirl_like.evaluation.finetune_model import FineTuneClassifier, parameter_groups, set_drop_path
from hirl_like.evaluation.finetune_recipe import FineTuneRecipe
from hirl_like.evaluation.knn import topk_hits
from hirl_like.schedules import warmup_cosine

LR_BATCH = 256  # base lr is per this many images (BEiT / MAE / SimCLR)


class LabelSubset(Dataset):
    """``dataset`` restricted to ``indices`` (the semi-supervised label subset).

    Unlike ``torch.utils.data.Subset`` it passes ``set_epoch`` on, so the augmentations still
    change every epoch; samples keep their ``index`` in the full split."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.indices[i]]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


# ----------------------------------------------------------------------------------------------
# The loss of a batch
# ----------------------------------------------------------------------------------------------


def build_criterion(recipe: FineTuneRecipe, num_classes: int) -> tuple[Callable | None, nn.Module]:
    """(mixup or None, criterion) as BEiT's ``run_class_finetuning.py`` picks them.

    Mixup / cutmix on: timm's ``Mixup`` (batch mode; it also smooths the labels) and
    ``SoftTargetCrossEntropy``; else label smoothing > 0: ``LabelSmoothingCrossEntropy``; else
    plain cross-entropy.
    """
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if recipe.uses_mixup:
        mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                      switch_prob=recipe.mixup_switch_prob, mode="batch", label_smoothing=recipe.label_smoothing,
                      num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    if recipe.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=recipe.label_smoothing)
    return None, nn.CrossEntropyLoss()


class BatchLoss(NamedTuple):
    loss: Tensor  # () mean over the batch
    images: Tensor  # (B', 3, H, W): what the model saw (mixed); B' = B, or B - 1 when mixup needed an even batch
    targets: Tensor  # (B', C) soft targets with mixup, else (B',) labels


def batch_loss(model: nn.Module, images: Tensor, labels: Tensor, mixup: Callable | None, criterion: nn.Module) -> BatchLoss:
    """The training loss of one batch: (B, 3, H, W) images, (B,) labels -> :class:`BatchLoss`.

    timm's batch mixup pairs image b with image B-1-b and needs an even batch: an odd one (a bad
    sample dropped from it) loses its last image. Mixup mixes ``images`` in place.
    """
    if mixup is not None:
        if images.shape[0] % 2:
            images, labels = images[:-1], labels[:-1]
        images, targets = mixup(images, labels)
    else:
        targets = labels
    return BatchLoss(criterion(model(images), targets), images, targets)


# ----------------------------------------------------------------------------------------------
# Training and scoring
# ----------------------------------------------------------------------------------------------


def effective_batch_size(requested: int, train_size: int, world_size: int, even: bool) -> int:
    """The per-rank batch: ``requested``, or all of a rank's share of a smaller training set (a
    1%-label subset can be smaller than one batch); even when mixup pairs the images."""
    batch = min(int(requested), train_size // world_size)
    if even and batch % 2:
        batch -= 1
    if batch < (2 if even else 1):
        raise ValueError(f"{train_size} training images over {world_size} process(es) leave no batch"
                         f"{' of 2 (mixup pairs images)' if even else ''}: use more labels or fewer processes.")
    return batch


def finetune(
    model: FineTuneClassifier,
    train_set: Dataset,
    recipe: FineTuneRecipe,
    *,
    batch_size: int,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    precision: str = "fp32",
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Fine-tune ``model`` (in place) on ``train_set`` with ``recipe``; returns what happened.

    ``batch_size`` is per rank (clamped by :func:`effective_batch_size`); the peak lr is
    ``recipe.base_lr * batch * world_size / 256``. Torch's and NumPy's global RNGs (drop path,
    mixup) are seeded with ``seed + rank``, so a pre-trained and a random-init run see the same
    draws. ``precision="bf16"`` autocasts the forward on CUDA. ``log`` gets one line per epoch
    (rank 0; None: silent).

    Returns {"batch_size", "global_batch_size", "lr", "iterations", "iterations_per_epoch",
    "epochs", "final_loss" (mean loss of the last epoch), "train_seconds"}.
    """
    device = torch.device(device)
    if model.is_vit:
        set_drop_path(model.backbone, recipe.drop_path)
    elif recipe.drop_path:
        raise ValueError("drop path is a ViT regulariser here; the ResNet recipe has none (set --drop_path 0).")
    model = model.to(device)
    batch = effective_batch_size(batch_size, len(train_set), world_size, even=recipe.uses_mixup)
    peak_lr = recipe.base_lr * batch * world_size / LR_BATCH
    groups = parameter_groups(model, recipe.weight_decay, recipe.layer_decay)
    if recipe.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=peak_lr, betas=recipe.betas)
    else:
        optimizer = torch.optim.SGD(groups, lr=peak_lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    mixup, criterion = build_criterion(recipe, model.num_classes)
    net: nn.Module = model
    if world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    torch.manual_seed(seed + rank)
    np.random.seed((seed + rank) % (1 << 32))  # timm's Mixup draws from NumPy's global RNG
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16" and device.type == "cuda")

    per_epoch = len(train_set) // world_size // batch
    total = per_epoch * recipe.epochs
    warmup = recipe.warmup_epochs * per_epoch
    step, losses, start = 0, [], time.perf_counter()
    model.train()
    for epoch in range(recipe.epochs):
        loader = build_train_loader(train_set, batch, num_workers, seed=seed, epoch=epoch, rank=rank, world_size=world_size)
        losses = []
        for sample in loader:
            lr = warmup_cosine(peak_lr, recipe.min_lr, warmup, total, step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            images = sample["image"].to(device, non_blocking=True)
            labels = torch.as_tensor(sample["label"]).long().to(device)
            with autocast:
                loss = batch_loss(net, images, labels, mixup, criterion).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the fine-tuning loss is {loss.item()} at iteration {step} (lr {lr:.3g}): "
                                         "lower --lr or use --precision fp32.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
        if log is not None and rank == 0:
            log(f"fine-tune epoch {epoch + 1}/{recipe.epochs}: loss {sum(losses) / max(len(losses), 1):.4f}, lr {lr:.3g}")
    return {
        "batch_size": batch,
        "global_batch_size": batch * world_size,
        "lr": peak_lr,
        "iterations": step,
        "iterations_per_epoch": per_epoch,
        "epochs": recipe.epochs,
        "final_loss": sum(losses) / len(losses) if losses else math.nan,
        "train_seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, dataset: Dataset, num_classes: int, *, batch_size: int, num_workers: int = 0,
    device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
) -> dict[str, float]:
    """Top-1 / top-5 (%) of ``model``'s logits (B, C) over ``dataset`` (evaluation transform),
    every image exactly once across ranks; top-5 is top-min(5, C). The same on every rank."""
    model.eval()
    loader = build_eval_loader(dataset, batch_size, num_workers, rank=rank, world_size=world_size)
    logits, labels = extract_features(lambda x: model(x), loader, device)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"the test split has labels outside 0..{num_classes - 1}, the classes of the head.")
    top5 = min(5, num_classes)
    hits = topk_hits(logits.float(), labels, (1, top5))
    n = max(labels.numel(), 1)
    return {"test_top1": 100.0 * hits[1] / n, "test_top5": 100.0 * hits[top5] / n, "test_size": int(labels.numel())}
