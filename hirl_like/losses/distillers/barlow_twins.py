"""Barlow Twins (Zbontar et al., ICML 2021) between a student and a teacher embedding.

Each embedding is normalised along the batch (zero mean, unit biased variance per dimension: a
BatchNorm without affine parameters, eps 1e-5, as Barlow Twins' ``self.bn``), over the batch of
every rank (gathered with gradient). The cross-correlation and the loss (paper eq. 1-2)::

    C_ij = 1/n sum_b za_bi zb_bj                       (D, D)
    L    = loss_scale * [ sum_i (1 - C_ii)^2 + lambda sum_i sum_{j != i} C_ij^2 ]

lambda = 5e-3 (the paper; Barlow Twins' code and ITRA use 0.0051). ``loss_scale`` multiplies the
whole loss (the official code's former ``--scale-loss``; 1 = the paper's loss). ITRA's copy
L2-normalises rows and then columns without centring them, so its C is not a correlation
(docs/deviations.md).

Returns ``{"loss", "on_diagonal", "off_diagonal"}``: the two unweighted sums, detached.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hirl_like.distributed import all_gather_with_grad, get_world_size
from hirl_like.losses.distillers._common import check_non_negative, check_pair, check_positive, float32
from hirl_like.registry import LOSSES


def batch_standardise(z: Tensor, eps: float) -> Tensor:
    """(n, D) -> (n, D): each column minus its mean, over sqrt(biased variance + eps)."""
    zc = z - z.mean(dim=0)
    return zc / torch.sqrt(zc.square().mean(dim=0) + eps)


@LOSSES.register()
class BarlowTwinsLoss(nn.Module):
    """Args:
    lambd: weight of the off-diagonal (redundancy) term (5e-3).
    loss_scale: factor on the whole loss (1).
    eps: of the batch normalisation (1e-5, BatchNorm1d's).
    gather: correlate over the batch of every rank (DDP); each rank returns the same global loss.
    """

    def __init__(self, lambd: float = 5e-3, loss_scale: float = 1.0, eps: float = 1e-5, gather: bool = True) -> None:
        super().__init__()
        check_non_negative("BarlowTwinsLoss", "lambd", lambd)
        check_positive("BarlowTwinsLoss", "loss_scale", loss_scale)
        check_positive("BarlowTwinsLoss", "eps", eps)
        self.lambd, self.loss_scale, self.eps, self.gather = float(lambd), float(loss_scale), float(eps), bool(gather)

    def forward(self, student: Tensor, teacher: Tensor) -> dict[str, Tensor]:
        """student, teacher: (B, D) embeddings of the same pairs."""
        check_pair(student, teacher, "BarlowTwinsLoss")
        with float32(student):
            za, zb = student.float(), teacher.float()
            if self.gather and get_world_size() > 1:
                za, zb = all_gather_with_grad(za), all_gather_with_grad(zb)
            if za.shape[0] < 2:
                raise ValueError("BarlowTwinsLoss needs at least 2 pairs (it normalises along the batch).")
            c = batch_standardise(za, self.eps).T @ batch_standardise(zb, self.eps) / za.shape[0]
            diagonal = c.diagonal()
            on = (1.0 - diagonal).square().sum()
            off = c.square().sum() - diagonal.square().sum()
            loss = self.loss_scale * (on + self.lambd * off)
        return {"loss": loss, "on_diagonal": on.detach(), "off_diagonal": off.detach()}
