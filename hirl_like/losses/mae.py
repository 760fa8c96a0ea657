"""MAE pixel-reconstruction objective (He et al. 2022): per-patch normalised MSE on removed patches."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hirl_like.registry import LOSSES


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), N = (H/p)*(W/p) in row-major patch order.

    Each patch is flattened in MAE's (p, p, C) order: index ``(i*p + j)*C + c`` holds pixel
    ``images[b, c, hp*p + i, wp*p + j]``. Non-square images are fine if both sides divide by p.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}.")
    b, c, h, w = images.shape
    p = patch_size
    if p <= 0 or h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch_size={p}; resize or crop the images.")
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


@LOSSES.register()
class MAELoss(nn.Module):
    """``loss = sum_n mask_n * mean_pixels (pred_n - target_n)^2 / max(sum_n mask_n, 1)``.

    With ``norm_pix_loss`` (MAE's default for its best results) the target patch is
    ``(x - mean(x)) / sqrt(var(x) + eps)`` over the patch's p*p*C values, ``var`` unbiased as
    MAE's ``Tensor.var``. Computed in float32.

    Args:
        patch_size: p (16). norm_pix_loss: normalise targets per patch. eps: 1e-6 as MAE.
    """

    def __init__(self, patch_size: int = 16, norm_pix_loss: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        if patch_size <= 0:
            raise ValueError(f"patch_size must be > 0, got {patch_size}.")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}.")
        self.patch_size = patch_size
        self.norm_pix_loss = norm_pix_loss
        self.eps = eps

    def target(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, p*p*C) float32 regression target (no grad)."""
        with torch.no_grad():
            target = patchify(images.detach().float(), self.patch_size)
            if self.norm_pix_loss:
                mean = target.mean(dim=-1, keepdim=True)
                var = target.var(dim=-1, keepdim=True)  # unbiased, as MAE
                target = (target - mean) / torch.sqrt(var + self.eps)
        return target

    def forward(self, pred: Tensor, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """pred: (B, N, p*p*C); images: (B, C, H, W); mask: (B, N), 1/True = removed (scored)."""
        target = self.target(images)
        if pred.shape != target.shape:
            raise ValueError(
                f"pred has shape {tuple(pred.shape)} but the patchified images give {tuple(target.shape)} "
                f"(patch_size={self.patch_size})."
            )
        if mask.shape != pred.shape[:2]:
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {tuple(pred.shape[:2])}.")
        mask = mask.float()
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)
        loss = (per_patch * mask).sum() / mask.sum().clamp(min=1.0)
        return {"loss": loss}
