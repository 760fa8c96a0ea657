"""Gradient clipping: one norm over every parameter (open_clip, torch) or one per tensor (DINO/iBOT).

Config: ``grad_clip`` (the bound; null or 0 = off) and ``grad_clip_mode``:
    global      all gradients scaled by ``min(1, clip / ||g||)`` with ``||g||`` the norm of all of
                them together (``torch.nn.utils.clip_grad_norm_``);
    per_tensor  each parameter's gradient scaled by ``clip / (||g_p|| + 1e-6)`` when that is < 1
                (DINO/iBOT ``utils.clip_gradients``, which the Harmony code uses at 3.0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

GRAD_CLIP_MODES = ("global", "per_tensor")
PER_TENSOR_EPS = 1e-6  # DINO's clip_gradients: clip / (norm + 1e-6)


def check_grad_clip_mode(mode: object) -> str:
    """``mode`` if it is one of :data:`GRAD_CLIP_MODES`, else ValueError naming the config key."""
    if mode not in GRAD_CLIP_MODES:
        raise ValueError(f"grad_clip_mode={mode!r} is not known; choose one of {', '.join(GRAD_CLIP_MODES)}.")
    return str(mode)


def clip_gradients_(params: Sequence[torch.Tensor], max_norm: float | None, mode: str = "global") -> torch.Tensor:
    """Clip the ``.grad`` of ``params`` in place; returns the total norm before clipping (0-d).

    ``max_norm`` None or 0: nothing is clipped, the norm is still returned (for logging and the
    non-finite guard). Parameters without a gradient are skipped.
    """
    check_grad_clip_mode(mode)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if mode == "global" and max_norm:
        return torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], float(max_norm))
    norms = torch.stack(torch._foreach_norm(grads))  # (P,) one norm per tensor, in few kernels
    total = torch.linalg.vector_norm(norms)
    if mode == "per_tensor" and max_norm:
        # clamp(max=1) multiplies gradients under the bound by exactly 1 (DINO leaves them untouched).
        coefs = (float(max_norm) / (norms + PER_TENSOR_EPS)).clamp(max=1.0)
        torch._foreach_mul_(grads, list(coefs.unbind()))
    return total
