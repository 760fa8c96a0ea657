"""ITRA's RKD distiller (Park et al. 2019): distance- and angle-wise relations of the batch."""

from __future__ import annotations

import torch

from hirl_like.losses.distillers.rkd import RKDLoss
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objectives.distiller_base import DistillerObjective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES


@OBJECTIVES.register("vl_rkd")
class RKDDistillerObjective(DistillerObjective):
    """``L = w_D L_RKD-D + w_A L_RKD-A`` between the relations of the student embeddings and those of
    the teacher embeddings of this rank's batch (:class:`RKDLoss`).

    Args:
        distance_weight, angle_weight: w_D, w_A (25, 50: the paper's; ITRA 0.5, 1.0).
        teacher: ``text`` (ITRA) or ``image``.
        detach_teacher: no gradient through the teacher's relations (default on: the RKD teacher is
            fixed and ITRA computes its relations under ``no_grad``).
    """

    def __init__(
        self,
        backbones: Backbones,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        teacher: str = "text",
        detach_teacher: bool = True,
    ) -> None:
        super().__init__(backbones, "vl_rkd", teacher=teacher, detach_teacher=detach_teacher)
        self.loss = RKDLoss(distance_weight=distance_weight, angle_weight=angle_weight)

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        return self.loss(*self.student_teacher(step))
