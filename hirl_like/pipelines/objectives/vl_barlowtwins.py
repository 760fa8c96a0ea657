"""ITRA's Barlow Twins distiller (Zbontar et al. 2021) between the image and the text embedding."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hirl_like.losses.distillers.barlow_twins import BarlowTwinsLoss
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objectives.distiller_base import DistillerObjective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES


@OBJECTIVES.register("vl_barlowtwins")
class BarlowTwinsDistillerObjective(DistillerObjective):
    """``L = loss_scale * [sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2]``, C the cross-correlation of the
    batch-normalised student and teacher embeddings over the batch of every rank (:class:`BarlowTwinsLoss`).

    Args:
        lambd: lambda (5e-3, the paper; ITRA 0.0051). loss_scale: factor on the loss (1).
        projector_hidden_dims, projector_dim: one projector per side (Barlow Twins: [8192, 8192] ->
            8192, BatchNorm + ReLU); default none, as ITRA.
        teacher: ``text`` (ITRA) or ``image``. detach_teacher: stop the gradient into the teacher tower.
    """

    def __init__(
        self,
        backbones: Backbones,
        lambd: float = 5e-3,
        loss_scale: float = 1.0,
        projector_hidden_dims: Sequence[int] = (),
        projector_dim: int | None = None,
        teacher: str = "text",
        detach_teacher: bool = False,
    ) -> None:
        super().__init__(backbones, "vl_barlowtwins", teacher=teacher, detach_teacher=detach_teacher)
        self.student_projector, self.teacher_projector = self.make_projectors(projector_hidden_dims, projector_dim)
        self.loss = BarlowTwinsLoss(lambd=lambd, loss_scale=loss_scale)

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        student, teacher = self.student_teacher(step)
        return self.loss(self.student_projector(student), self.teacher_projector(teacher))
