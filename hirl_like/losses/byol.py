"""BYOL's symmetric regression loss (Grill et al. 2020, eq. 2 and the symmetrised loss of Sec. 3.1).

For an online prediction ``p`` and a target projection ``z`` (both (B, D))::

    L(p, z) = mean_b || p_b/||p_b|| - z_b/||z_b|| ||^2 = 2 - 2 * mean_b cos(p_b, z_b)

and the total of the two views is ``L(p_1, sg(z'_2)) + L(p_2, sg(z'_1))``: the prediction of each
view regresses the target network's projection of the *other* view (``sg`` = stop-gradient; the
target network is an EMA, never trained by gradient). The two terms are added, not averaged, as
the paper's ``L^BYOL + L~^BYOL`` and solo-learn's ``byol_loss_func`` summed over view pairs (which
HARL's reference code uses). Minimum 0, maximum 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.registry import LOSSES


def byol_regression(p: Tensor, z: Tensor) -> Tensor:
    """``2 - 2 * mean_b cos(p_b, sg(z_b))``: p, z (B, D) -> scalar; z is detached."""
    return 2.0 - 2.0 * F.cosine_similarity(p, z.detach(), dim=-1).mean()


def symmetric_byol(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """``L(p1, sg(z2)) + L(p2, sg(z1))`` in float32 with autocast off; all (B, D)."""
    shapes = {tuple(t.shape) for t in (p1, p2, z1, z2)}
    if len(shapes) != 1 or p1.dim() != 2:
        raise ValueError(f"p1, p2, z1, z2 must all be (B, D), got {[tuple(t.shape) for t in (p1, p2, z1, z2)]}.")
    with torch.autocast(device_type=p1.device.type, enabled=False):
        return byol_regression(p1.float(), z2.float()) + byol_regression(p2.float(), z1.float())


def projection_std(z: Tensor) -> Tensor:
    """Collapse monitor (detached): per-channel std over the batch of ``z / ||z||`` (B, D), averaged
    over channels; about 1/sqrt(D) without collapse, 0 when collapsed (0 for a batch of one)."""
    with torch.no_grad():
        return F.normalize(z.float(), dim=-1).std(dim=0).mean() if z.shape[0] > 1 else z.new_zeros(())


@LOSSES.register()
class BYOLLoss(nn.Module):
    """``forward(p1, p2, z1_target, z2_target)``, all (B, D) -> ``{"loss", "z_std"}``.

    ``loss = L(p1, sg(z2_target)) + L(p2, sg(z1_target))`` with ``L = 2 - 2 cos`` (module
    docstring); ``z_std`` (:func:`projection_std`) is taken from the first target projection.
    """

    def forward(self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> dict[str, Tensor]:
        return {"loss": symmetric_byol(p1, p2, z1, z2), "z_std": projection_std(z1)}
