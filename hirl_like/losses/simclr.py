"""SimCLR's NT-Xent loss as used by SLIP (Mu et al. 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.distributed import all_gather_with_grad, get_rank
from hirl_like.registry import LOSSES

# Added to self-similarity logits; finite (unlike -inf) so that no inf - inf can appear.
_SELF_MASK = -1e9


@LOSSES.register()
class SimCLRLoss(nn.Module):
    """NT-Xent over two views, gathered across ranks with gradient (SLIP's ``SIMCLRLoss``).

    With z normalised, ``*_all`` the (world*B, D) embeddings of every rank and
    ``labels = arange(B) + rank*B``:
    ``logits_ab = z1 @ z2_all^T / T``, ``logits_ba = z2 @ z1_all^T / T``,
    ``logits_aa = z1 @ z1_all^T / T`` and ``logits_bb = z2 @ z2_all^T / T`` with each sample's own
    similarity (column rank*B + i) set to -1e9;
    ``loss = (CE([ab | aa], labels) + CE([ba | bb], labels)) / 2`` (2N-way classification per row).
    ``acc`` = top-1 accuracy (percent) of ``logits_ab`` against labels, detached.

    Each rank's loss is the mean over its B rows: the mean over ranks equals one process's loss on the
    concatenated batch. All ranks must pass the same B. Computed in float32, autocast disabled.

    Args:
        temperature: T (0.1 in SLIP).
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = temperature

    def forward(self, z1: Tensor, z2: Tensor) -> dict[str, Tensor]:
        """z1, z2: (B, D) projections of two views of the same B images (normalised here)."""
        if z1.dim() != 2 or z1.shape != z2.shape:
            raise ValueError(f"z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must both be (B, D).")
        b = z1.shape[0]
        with torch.autocast(device_type=z1.device.type, enabled=False):
            q_a = F.normalize(z1.float(), dim=-1)
            q_b = F.normalize(z2.float(), dim=-1)
            k_a, k_b = all_gather_with_grad(q_a), all_gather_with_grad(q_b)
            labels = torch.arange(b, device=q_a.device) + get_rank() * b
            is_self = F.one_hot(labels, k_a.shape[0]).bool()
            t = self.temperature
            logits_aa = (q_a @ k_a.T / t).masked_fill(is_self, _SELF_MASK)
            logits_bb = (q_b @ k_b.T / t).masked_fill(is_self, _SELF_MASK)
            logits_ab = q_a @ k_b.T / t
            logits_ba = q_b @ k_a.T / t
            loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], dim=1), labels)
            loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], dim=1), labels)
            loss = (loss_a + loss_b) / 2
        with torch.no_grad():
            acc = (logits_ab.argmax(dim=-1) == labels).float().mean() * 100.0
        return {"loss": loss, "acc": acc}
