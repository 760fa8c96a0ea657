"""BYOL objective (Grill et al. 2020): an online predictor regresses the EMA target's projection of
the other view. No negatives, no queue."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hirl_like.losses.byol import projection_std, symmetric_byol
from hirl_like.models.heads import ProjectionMLP
from hirl_like.pipelines.backbones import Backbones, batch_statistics, make_teacher
from hirl_like.pipelines.objective import Objective
from hirl_like.pipelines.objectives._checks import check_dims, check_hidden_dims
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES


def two_global_crops(step: StepCache, owner: str) -> int:
    """The batch size B of the global crops; ValueError unless there are at least 2 of them."""
    crops = step.view("global_crops")
    if len(crops) < 2:
        raise ValueError(f"{owner} compares 2 global crops, the batch has {len(crops)}.")
    return int(crops[0].shape[0])


@OBJECTIVES.register("byol")
class BYOLObjective(Objective):
    """Online network: the student backbone f (``student_global_features``: ResNet pool or ViT
    [CLS] of global crops 0 and 1), projector g, predictor q. Target network: the EMA teacher
    backbone (``teacher_global_features``) and an EMA copy of g, their BatchNorms on batch
    statistics (the reference target network runs in train mode)::

        p_i = q(g(f(x_i))),  z'_i = g_ema(f_ema(x_i))                          (B, dim)
        L = [2 - 2 cos(p_1, sg(z'_2))] + [2 - 2 cos(p_2, sg(z'_1))]    (mean over the batch)

    (:func:`~hirl_like.losses.byol.symmetric_byol`). The target follows the pipeline's EMA:
    ``theta' <- m theta' + (1 - m) theta`` after every optimizer step, with ``m`` cosine from
    ``ema_momentum`` to ``ema_momentum_end`` per iteration; BYOL's ``tau_base`` 0.99 -> 1 is
    ``pipeline.ema_momentum: 0.99`` (the paper's 1000-epoch runs: 0.996).

    Heads (BYOL Sec. 3.3): projector D -> 4096 -> 256 and predictor 256 -> 4096 -> 256, each
    Linear -> BatchNorm -> ReLU -> Linear. Heads run per view (BatchNorm over one view's batch).
    The exported backbone is the online one (BYOL evaluates f_theta):
    :meth:`Backbones.prefer_student_export`.

    Args:
        dim: projection size (256).
        projector_hidden_dims: hidden widths of the projector ([4096]).
        predictor_hidden_dims: hidden widths of the predictor ([4096]).

    Returns ``{"loss", "z_std"}`` (``z_std``: per-channel std of the normalised online projection
    of crop 0, ~1/sqrt(dim) without collapse, 0 when collapsed; detached).
    """

    views = ("global_crops",)

    def __init__(
        self,
        backbones: Backbones,
        dim: int = 256,
        projector_hidden_dims: Sequence[int] = (4096,),
        predictor_hidden_dims: Sequence[int] = (4096,),
    ) -> None:
        super().__init__(backbones)
        owner = type(self).__name__.removesuffix("Objective").lower()
        check_dims(owner, dim=dim)
        projector_hidden = check_hidden_dims(owner, "projector_hidden_dims", projector_hidden_dims)
        predictor_hidden = check_hidden_dims(owner, "predictor_hidden_dims", predictor_hidden_dims)
        backbones.require_vision_teacher()
        backbones.prefer_student_export()
        self.projector = ProjectionMLP(backbones.student_vision.embed_dim, projector_hidden, dim, norm="bn")
        self.predictor = ProjectionMLP(dim, predictor_hidden, dim, norm="bn")
        self.teacher_projector = make_teacher(self.projector)

    def requires(self) -> tuple[str, ...]:
        return ("student_global_features", "teacher_global_features")

    def ema_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [(self.projector, self.teacher_projector)]

    # -- the heads, shared with HARL's region terms ---------------------------------------------
    def online(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) pooled features -> (z, p) online projection and prediction, both (B, dim)."""
        z = self.projector(pooled)
        return z, self.predictor(z)

    @torch.no_grad()
    def target(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, D) target-backbone pooled features -> (B, dim) target projection, no grad."""
        with batch_statistics(self.teacher_projector, enabled=self.training):
            return self.teacher_projector(pooled)

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        b = two_global_crops(step, "byol")
        feats = step.get("student_global_features")
        (z1, p1), (_, p2) = (self.online(feats[v * b : (v + 1) * b]) for v in range(2))
        targets = step.get("teacher_global_features")
        t1, t2 = (self.target(targets[v * b : (v + 1) * b]) for v in range(2))
        return {"loss": symmetric_byol(p1, p2, t1, t2), "z_std": projection_std(z1)}
