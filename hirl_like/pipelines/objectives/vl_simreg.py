"""ITRA's SimReg distillers (Navaneet et al. 2022): the student embedding through a predictor MLP,
L2-normalised, regressed onto the normalised teacher embedding."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hirl_like.losses.distillers.simreg import SimRegL1Loss, SimRegLoss, SimRegSmoothL1Loss
from hirl_like.models.heads import ProjectionMLP
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objectives._checks import check_hidden_dims, check_positive
from hirl_like.pipelines.objectives.distiller_base import DistillerObjective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES


class _SimRegObjective(DistillerObjective):
    """``p = predictor(student embedding)`` (E -> ``predictor_hidden_dims`` with BatchNorm + ReLU -> E),
    loss of ``normalize(p)`` against ``normalize(teacher)`` (see the loss classes).

    Args:
        predictor_hidden_dims: hidden widths of the predictor; None: SimReg's 4-layer head
            (E -> 2E -> E -> 2E -> E, its ``n_mlp_layers 4``); [] : one linear layer.
        teacher: ``text`` (ITRA's default) or ``image``.
        detach_teacher: no gradient into the teacher tower (SimReg's teacher is frozen; ITRA
            lets the gradient through, the default here).
    """

    def __init__(self, backbones: Backbones, key: str, loss: torch.nn.Module,
                 predictor_hidden_dims: Sequence[int] | None, teacher: str, detach_teacher: bool) -> None:
        super().__init__(backbones, key, teacher=teacher, detach_teacher=detach_teacher)
        e = self.embed_dim
        hidden = (2 * e, e, 2 * e) if predictor_hidden_dims is None else check_hidden_dims(key, "predictor_hidden_dims", predictor_hidden_dims)
        self.predictor = ProjectionMLP(e, hidden, e, norm="bn")
        self.loss = loss

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        student, teacher = self.student_teacher(step)
        return self.loss(self.predictor(student), teacher)


@OBJECTIVES.register("vl_simreg")
class SimRegObjective(_SimRegObjective):
    __doc__ = "SimReg: ``1/B sum_b ||p_b - t_b||^2`` of unit vectors. " + (_SimRegObjective.__doc__ or "")

    def __init__(self, backbones: Backbones, predictor_hidden_dims: Sequence[int] | None = None,
                 teacher: str = "text", detach_teacher: bool = False) -> None:
        super().__init__(backbones, "vl_simreg", SimRegLoss(), predictor_hidden_dims, teacher, detach_teacher)


@OBJECTIVES.register("vl_simreg_l1")
class SimRegL1Objective(_SimRegObjective):
    __doc__ = "SimReg-L1: ``1/B sum_b ||p_b - t_b||_1`` of unit vectors. " + (_SimRegObjective.__doc__ or "")

    def __init__(self, backbones: Backbones, predictor_hidden_dims: Sequence[int] | None = None,
                 teacher: str = "text", detach_teacher: bool = False) -> None:
        super().__init__(backbones, "vl_simreg_l1", SimRegL1Loss(), predictor_hidden_dims, teacher, detach_teacher)


@OBJECTIVES.register("vl_simreg_smoothl1")
class SimRegSmoothL1Objective(_SimRegObjective):
    __doc__ = ("SimReg-SmoothL1: ``1/B sum_b sum_d huber_beta(p_b - t_b)_d`` of unit vectors (``beta``: 1). "
               + (_SimRegObjective.__doc__ or ""))

    def __init__(self, backbones: Backbones, predictor_hidden_dims: Sequence[int] | None = None,
                 teacher: str = "text", detach_teacher: bool = False, beta: float = 1.0) -> None:
        check_positive("vl_simreg_smoothl1", "beta", beta)
        super().__init__(backbones, "vl_simreg_smoothl1", SimRegSmoothL1Loss(beta), predictor_hidden_dims, teacher,
                         detach_teacher)
