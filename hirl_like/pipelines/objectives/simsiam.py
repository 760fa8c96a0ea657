"""SimSiam objective (Chen & He 2021): a predictor matches the stop-gradient projection of the other view."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hirl_like.losses.simsiam import SimSiamLoss
from hirl_like.models.heads import ProjectionMLP
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objective import Objective
from hirl_like.pipelines.objectives._checks import check_dims, check_hidden_dims
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES


@OBJECTIVES.register("simsiam")
class SimSiamObjective(Objective):
    """Encoder f: the student backbone's pooled feature of global crops 0 and 1
    (``student_global_features``, (2B, D) of the G*B rows) followed by the projector; predictor h.
    No teacher, no negatives::

        z_i = projector(f(x_i)),  p_i = h(z_i)                       (B, dim)
        D(p, z) = -mean_b  p_b . z_b / (||p_b|| ||z_b||)
        L = D(p_1, sg(z_2)) / 2 + D(p_2, sg(z_1)) / 2                 (sg = stop-gradient)

    (:class:`~hirl_like.losses.simsiam.SimSiamLoss`; the minimum is -1). The stop-gradient is the
    whole method: no gradient reaches z through the loss, only through p.

    Projector (SimSiam ``builder.py``): D -> 2048 -> 2048 -> 2048, BatchNorm after every Linear
    (the last one without affine), ReLU after all but the last. Predictor: 2048 -> 512 -> 2048
    with BatchNorm + ReLU on the bottleneck. Projector and predictor run per view, so every
    BatchNorm normalises over one view's batch, as the reference (a ResNet backbone runs per view
    too: :mod:`hirl_like.pipelines.forwards.features`). Not reproduced: the reference's fixed
    predictor learning rate (``--fix-pred-lr``; the optimizer schedules every parameter alike).

    Args:
        dim: projection size (2048).
        projector_hidden_dims: hidden widths of the projector ([2048, 2048]; the paper's CIFAR
            ResNet-18 variant has one: [2048]).
        predictor_hidden_dim: the predictor's bottleneck (512).

    Returns ``{"loss", "z_std"}`` (``z_std``: per-channel std of normalised z_1, about
    1/sqrt(dim) without collapse, 0 when collapsed; detached).
    """

    views = ("global_crops",)

    def __init__(
        self,
        backbones: Backbones,
        dim: int = 2048,
        projector_hidden_dims: Sequence[int] = (2048, 2048),
        predictor_hidden_dim: int = 512,
    ) -> None:
        super().__init__(backbones)
        check_dims("simsiam", dim=dim, predictor_hidden_dim=predictor_hidden_dim)
        hidden = check_hidden_dims("simsiam", "projector_hidden_dims", projector_hidden_dims)
        width = backbones.student_vision.embed_dim
        self.projector = ProjectionMLP(width, hidden, dim, norm="bn", last_norm=True)
        self.predictor = ProjectionMLP(dim, (predictor_hidden_dim,), dim, norm="bn")
        self.loss = SimSiamLoss()

    def requires(self) -> tuple[str, ...]:
        return ("student_global_features",)

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        crops = step.view("global_crops")
        if len(crops) < 2:
            raise ValueError(f"simsiam compares 2 global crops, the batch has {len(crops)}.")
        b = crops[0].shape[0]
        feats = step.get("student_global_features")
        z1, z2 = self.projector(feats[:b]), self.projector(feats[b : 2 * b])
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return self.loss(p1, p2, z1, z2)
