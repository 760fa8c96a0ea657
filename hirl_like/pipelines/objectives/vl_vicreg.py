"""ITRA's VICReg distiller (Bardes et al. 2022) between the image and the text embedding."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hirl_like.losses.distillers.vicreg import VICRegLoss
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objectives.distiller_base import DistillerObjective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES


@OBJECTIVES.register("vl_vicreg")
class VICRegDistillerObjective(DistillerObjective):
    """``L = lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')]`` (:class:`VICRegLoss`) with Z the
    student and Z' the teacher embeddings (each through its own expander when ``projector_dim`` is
    set), over the batch of every rank.

    Args:
        sim_coeff, std_coeff, cov_coeff: lambda, mu, nu (25, 25, 1). std_target: gamma (1). eps: 1e-4.
        projector_hidden_dims, projector_dim: the expanders (VICReg: [8192, 8192] -> 8192, BatchNorm +
            ReLU); default none, as ITRA, so the loss sees the L2-normalised joint embeddings.
        teacher: ``text`` (ITRA) or ``image``. detach_teacher: stop the gradient into the teacher tower.
    """

    def __init__(
        self,
        backbones: Backbones,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        std_target: float = 1.0,
        eps: float = 1e-4,
        projector_hidden_dims: Sequence[int] = (),
        projector_dim: int | None = None,
        teacher: str = "text",
        detach_teacher: bool = False,
    ) -> None:
        super().__init__(backbones, "vl_vicreg", teacher=teacher, detach_teacher=detach_teacher)
        self.student_projector, self.teacher_projector = self.make_projectors(projector_hidden_dims, projector_dim)
        self.loss = VICRegLoss(sim_coeff, std_coeff, cov_coeff, std_target, eps)

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        student, teacher = self.student_teacher(step)
        return self.loss(self.student_projector(student), self.teacher_projector(teacher))
