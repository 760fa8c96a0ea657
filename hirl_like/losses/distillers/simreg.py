"""SimReg (Navaneet et al. 2022): regression of the student's prediction onto the teacher embedding.

With ``p = normalize(student)`` (the student's predictor output) and ``t = normalize(teacher)``,
both (B, D), SimReg minimises the squared Euclidean distance of the unit vectors::

    L = 1/B sum_b ||p_b - t_b||_2^2  =  1/B sum_b (2 - 2 cos(p_b, t_b))

(SimReg's ``simreg.py``: ``dist = 2 - 2 * <query, target>``, ``loss = dist.mean()``). ITRA's
``SimReg`` uses ``nn.MSELoss`` instead, the same sum divided by D as well (docs/deviations.md).
ITRA's two variants swap the per-coordinate distance (same reduction here: sum over D, mean over B):

- ``SimRegL1Loss``:       ``1/B sum_b sum_d |p_bd - t_bd|``
- ``SimRegSmoothL1Loss``: ``1/B sum_b sum_d huber_beta(p_bd - t_bd)``, ``huber_beta(x) = x^2 / (2 beta)``
  for ``|x| < beta``, else ``|x| - beta / 2`` (``F.smooth_l1_loss``).

Returns ``{"loss", "cosine"}``: ``cosine`` = mean cos(p_b, t_b), detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.losses.distillers._common import check_pair, check_positive, float32
from hirl_like.registry import LOSSES


class _RegressionLoss(nn.Module):
    def distance(self, diff: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Per-coordinate distance of ``p - t``: (B, D) -> (B, D)."""
        raise NotImplementedError

    def forward(self, student: Tensor, teacher: Tensor) -> dict[str, Tensor]:
        """student: (B, D) predictor output; teacher: (B, D) target embedding (not detached here)."""
        check_pair(student, teacher, type(self).__name__)
        with float32(student):
            p = F.normalize(student.float(), dim=1)
            t = F.normalize(teacher.float(), dim=1)
            loss = self.distance(p - t).sum(dim=1).mean()
        return {"loss": loss, "cosine": (p * t).sum(dim=1).mean().detach()}


@LOSSES.register()
class SimRegLoss(_RegressionLoss):
    """``1/B sum_b ||normalize(p_b) - normalize(t_b)||^2`` (SimReg)."""

    def distance(self, diff: Tensor) -> Tensor:
        return diff.square()


@LOSSES.register()
class SimRegL1Loss(_RegressionLoss):
    """``1/B sum_b ||normalize(p_b) - normalize(t_b)||_1`` (ITRA's SimReg-L1)."""

    def distance(self, diff: Tensor) -> Tensor:
        return diff.abs()


@LOSSES.register()
class SimRegSmoothL1Loss(_RegressionLoss):
    """``1/B sum_b sum_d huber_beta(normalize(p_b) - normalize(t_b))_d`` (ITRA's SimReg-SmoothL1).

    Args:
        beta: where the Huber loss turns from quadratic to linear (1.0, ``F.smooth_l1_loss``).
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        check_positive("SimRegSmoothL1Loss", "beta", beta)
        self.beta = float(beta)

    def distance(self, diff: Tensor) -> Tensor:
        return F.smooth_l1_loss(diff, torch.zeros_like(diff), reduction="none", beta=self.beta)
