"""VICReg (Bardes, Ponce & LeCun, ICLR 2022) between a student and a teacher embedding.

For Z (student) and Z' (teacher), (n, d) each, over the batch of every rank (gathered with
gradient, as VICReg's ``FullGatherLayer``), the paper's eq. (1)-(6)::

    s(Z, Z') = 1/n sum_i ||z_i - z'_i||_2^2                                  invariance
    v(Z)     = 1/d sum_j max(0, gamma - sqrt(Var(z^j) + eps))                variance
    c(Z)     = 1/d sum_{i != j} [C(Z)]_ij^2,  C(Z) = 1/(n-1) sum_i (z_i - mean)(z_i - mean)^T
    L        = lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')]

with Var the unbiased variance, lambda = mu = 25, nu = 1, gamma = 1, eps = 1e-4. VICReg's code
(and ITRA's copy) averages the invariance over n*d elements (``F.mse_loss``) and halves the
variance sum; this follows the paper (docs/deviations.md).

Returns ``{"loss", "invariance", "variance", "covariance"}``; the last three are the unweighted
s, v(Z) + v(Z') and c(Z) + c(Z'), detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.distributed import all_gather_with_grad, get_world_size
from hirl_like.losses.distillers._common import check_non_negative, check_pair, check_positive, float32
from hirl_like.registry import LOSSES


def _variance(z: Tensor, gamma: float, eps: float) -> Tensor:
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def _covariance(z: Tensor) -> Tensor:
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (n - 1)
    off_diagonal = cov.square().sum() - cov.diagonal().square().sum()
    return off_diagonal / d


@LOSSES.register()
class VICRegLoss(nn.Module):
    """Args:
    sim_coeff: lambda (25). std_coeff: mu (25). cov_coeff: nu (1).
    std_target: gamma, the target standard deviation of every dimension (1).
    eps: inside the square root of the variance (1e-4).
    gather: score the batch of every rank (DDP); each rank then returns the same global loss.
    """

    def __init__(
        self,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        std_target: float = 1.0,
        eps: float = 1e-4,
        gather: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff)):
            check_non_negative("VICRegLoss", name, value)
        check_positive("VICRegLoss", "std_target", std_target)
        check_positive("VICRegLoss", "eps", eps)
        self.sim_coeff, self.std_coeff, self.cov_coeff = float(sim_coeff), float(std_coeff), float(cov_coeff)
        self.std_target, self.eps, self.gather = float(std_target), float(eps), bool(gather)

    def forward(self, student: Tensor, teacher: Tensor) -> dict[str, Tensor]:
        """student, teacher: (B, D) embeddings of the same pairs (no normalisation here)."""
        check_pair(student, teacher, "VICRegLoss")
        with float32(student):
            z, z2 = student.float(), teacher.float()
            if self.gather and get_world_size() > 1:
                z, z2 = all_gather_with_grad(z), all_gather_with_grad(z2)
            if z.shape[0] < 2:
                raise ValueError("VICRegLoss needs at least 2 pairs (variance and covariance over the batch).")
            invariance = (z - z2).square().sum(dim=1).mean()
            variance = _variance(z, self.std_target, self.eps) + _variance(z2, self.std_target, self.eps)
            covariance = _covariance(z) + _covariance(z2)
            loss = self.sim_coeff * invariance + self.std_coeff * variance + self.cov_coeff * covariance
        return {
            "loss": loss,
            "invariance": invariance.detach(),
            "variance": variance.detach(),
            "covariance": covariance.detach(),
        }
