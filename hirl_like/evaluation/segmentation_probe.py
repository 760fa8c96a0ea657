"""Linear dense probe: a 1x1 convolution on frozen ViT patch tokens, trained per pixel.

For a canvas of S x S pixels and a ViT of patch size P, the last block's normalised patch tokens
(no [CLS], no register tokens) form a grid ``z`` of shape (S/P, S/P, D). The probe is

    logits = upsample_bilinear(W z + b, to S x S)          W: (C, D), b: (C,)
    loss   = mean over pixels p of  -log softmax(logits(p))[mask(p)]

(``W z + b`` on each token is a 1x1 convolution, i.e. ``nn.Linear(D, C)``). Features are
standardised with the training tokens' per-dimension mean and std, and, the backbone being
frozen, extracted once; only the head is trained (AdamW or SGD with momentum, cosine lr).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from hirl_like.evaluation.segmentation_metrics import confusion_matrix

OPTIMIZERS = ("adamw", "sgd")


def vit_geometry(model: nn.Module) -> tuple[int, int]:
    """(img_size, patch_size) the ViT was built (and trained) with, read from its patch embedding."""
    embed = getattr(model, "patch_embed", None)
    if embed is None or not hasattr(model, "forward_tokens"):
        raise ValueError(f"{type(model).__name__} is not a ViT with patch tokens (no patch_embed / forward_tokens).")
    img, patch = embed.img_size, embed.patch_size
    img = img[0] if isinstance(img, (tuple, list)) else img
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    return int(img), int(patch)


def check_canvas_size(canvas_size: int, patch_size: int, img_size: int) -> None:
    """ValueError (one line, with the fix) unless ``canvas_size`` is a positive multiple of ``patch_size``."""
    if canvas_size < patch_size or canvas_size % patch_size:
        raise ValueError(
            f"--canvas_size {canvas_size} is not a multiple of the ViT's patch size {patch_size}: pass a multiple of "
            f"{patch_size}, e.g. --canvas_size {img_size} (the size the backbone was trained at)."
        )


def canvases_to_input(images: np.ndarray | Tensor) -> Tensor:
    """uint8 grey canvases (B, S, S) -> (B, 3, S, S) float, grey replicated to RGB and normalised with
    ImageNet's mean / std (as the evaluation transform does)."""
    x = torch.as_tensor(images).float().div(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def patch_token_features(
    model: nn.Module, images: np.ndarray, batch_size: int = 256, device: str | torch.device = "cpu"
) -> Tensor:
    """Frozen last-layer patch tokens of uint8 canvases (N, S, S): float32 (N, S/P, S/P, D) on the CPU."""
    _, patch = vit_geometry(model)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    model = model.to(device).eval()
    n, s = images.shape[0], images.shape[-1]
    side = s // patch
    out = []
    for start in range(0, n, batch_size):
        x = canvases_to_input(images[start:start + batch_size]).to(device)
        tokens = model.forward_tokens(x)[:, prefix:]  # (B, side * side, D), row-major patch order
        out.append(tokens.float().cpu().reshape(tokens.shape[0], side, side, tokens.shape[-1]))
    return torch.cat(out)


def _logits(head: nn.Linear, feats: Tensor, size: int) -> Tensor:
    """(B, h, w, D) tokens -> (B, C, size, size) bilinearly upsampled logits."""
    return F.interpolate(head(feats).permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False)


def train_dense_probe(
    feats: Tensor,
    masks: np.ndarray | Tensor,
    num_classes: int,
    epochs: int = 10,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    optimizer: str = "adamw",
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[nn.Linear, Tensor, Tensor]:
    """Fit the linear head on (N, h, w, D) features and (N, S, S) masks.

    Returns (head, mean (D,), std (D,)): the head takes standardised tokens ``(z - mean) / std``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0; got {epochs}, {batch_size}, {lr}")
    flat = feats.reshape(-1, feats.shape[-1])
    mean, std = flat.mean(dim=0), flat.std(dim=0).clamp_min(1e-6)
    x = ((feats - mean) / std).to(device)
    y = torch.as_tensor(masks).long().to(device)
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(feats.shape[-1], num_classes).to(device)
    with torch.no_grad():  # seeded initialisation, independent of the global RNG
        bound = 1.0 / math.sqrt(feats.shape[-1])
        head.weight.copy_(torch.empty(head.weight.shape).uniform_(-bound, bound, generator=gen))
        head.bias.zero_()
    if optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen).to(device)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(_logits(head, x[idx], y.shape[-1]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval(), mean.cpu(), std.cpu()


@torch.no_grad()
def probe_confusion(
    head: nn.Linear,
    mean: Tensor,
    std: Tensor,
    feats: Tensor,
    masks: np.ndarray | Tensor,
    num_classes: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> Tensor:
    """(C, C) confusion matrix of the probe's per-pixel argmax on (N, h, w, D) features vs (N, S, S) masks."""
    y = torch.as_tensor(masks).long()
    total = torch.zeros(num_classes, num_classes, dtype=torch.long)
    mean, std = mean.to(device), std.to(device)
    for start in range(0, len(feats), batch_size):
        x = (feats[start:start + batch_size].to(device) - mean) / std
        pred = _logits(head, x, y.shape[-1]).argmax(dim=1).cpu()
        total += confusion_matrix(pred, y[start:start + batch_size], num_classes)
    return total


def constant_confusion(masks: np.ndarray | Tensor, num_classes: int, label: int = 0) -> Tensor:
    """Confusion matrix of predicting ``label`` (default: background) at every pixel: the trivial reference."""
    y = torch.as_tensor(masks).long()
    return confusion_matrix(torch.full_like(y, label), y, num_classes)
