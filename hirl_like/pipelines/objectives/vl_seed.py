"""ITRA's SEED distiller (Fang et al. 2021): the teacher's similarity distribution over a queue."""

from __future__ import annotations

import torch

from hirl_like.losses.distillers.seed import SEEDLoss
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objectives.distiller_base import DistillerObjective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES


@OBJECTIVES.register("vl_seed")
class SEEDDistillerObjective(DistillerObjective):
    """``L = -1/B sum_b sum_j p_T[b, j] log p_S[b, j]`` over the queue of teacher embeddings plus the
    sample's own (:class:`SEEDLoss`). Uni-directional: no gradient reaches the teacher tower.

    Args:
        queue_size: K (65536, the paper; ITRA 128,000).
        student_temp, teacher_temp: tau_S, tau_T (0.2, 0.01, the paper; ITRA 0.07, 1e-4).
        teacher: ``text`` (ITRA) or ``image``.
    """

    uni_directional = True

    def __init__(self, backbones: Backbones, queue_size: int = 65536, student_temp: float = 0.2,
                 teacher_temp: float = 0.01, teacher: str = "text") -> None:
        super().__init__(backbones, "vl_seed", teacher=teacher)
        self.loss = SEEDLoss(dim=self.embed_dim, queue_size=queue_size, student_temp=student_temp, teacher_temp=teacher_temp)

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        return self.loss(*self.student_teacher(step))
