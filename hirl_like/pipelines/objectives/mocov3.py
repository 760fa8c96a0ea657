"""MoCo v3 objective (Chen, Xie & He 2021): symmetric in-batch InfoNCE of predicted queries against
momentum keys, for ViTs and ResNets."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hirl_like.losses.moco import MoCoV3Loss
from hirl_like.models.heads import ProjectionMLP
from hirl_like.pipelines.backbones import Backbones, batch_statistics, make_teacher
from hirl_like.pipelines.forwards.features import is_token_model
from hirl_like.pipelines.objective import Objective
from hirl_like.pipelines.objectives._checks import check_dims, check_hidden_dims, check_positive
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES


@OBJECTIVES.register("mocov3")
class MoCoV3Objective(Objective):
    """Base encoder f: the student backbone's pooled feature (``student_global_features``: ViT
    [CLS] or ResNet pool) of global crops 0 and 1, then the projector g and the predictor h.
    Momentum encoder: the EMA teacher backbone (``teacher_global_features``) and an EMA copy of g
    (BatchNorm with batch statistics, as MoCo v3's momentum encoder in train mode). No queue::

        q_i = h(g(f(x_i))),  k_i = g_ema(f_ema(x_i))                     (B, dim)
        ctr(q, k) = 2T * CE( norm(q) norm(k_all)^T / T, labels = arange(B) + rank*B )
        L = ctr(q_1, k_2) + ctr(q_2, k_1)

    with ``k_all`` the keys of every rank (no gradient; :class:`~hirl_like.losses.moco.MoCoV3Loss`).
    The momentum schedule is the pipeline's: MoCo v3's 0.99 -> 1 cosine (ViT recipes) is
    ``ema_momentum: 0.99, ema_momentum_end: 1.0``.

    Heads (``moco-v3/moco/builder.py``, ``_build_mlp``): projector D -> 4096 -> 4096 -> 256 (ViT
    recipe; ResNet recipe: one hidden layer, ``projector_hidden_dims: [4096]``), predictor
    256 -> 4096 -> 256, BatchNorm + ReLU on the hidden layers and a BatchNorm without affine on the
    output (the ResNet recipe's predictor has none: ``predictor_last_bn: false``). The heads run per
    view, so their BatchNorms normalise over one view's batch, as the reference.

    ``freeze_patch_embed``: MoCo v3's fixed random patch projection (``--stop-grad-conv1``, a
    stability fix for ViTs): ``requires_grad_(False)`` on the student ViT's ``patch_embed``;
    the teacher copy then stays equal to it. A backbone without ``patch_embed`` is an error.

    The exported backbone is the student (MoCo v3 evaluates ``base_encoder``):
    :meth:`Backbones.prefer_student_export`.

    Args:
        dim: output size of projector and predictor (256).
        projector_hidden_dims: hidden widths of the projector ([4096, 4096]).
        predictor_hidden_dims: hidden widths of the predictor ([4096]).
        predictor_last_bn: BatchNorm (no affine) on the predictor's output (on, the ViT recipe).
        temperature: T (0.2, the ViT recipes; the ResNet-50 recipe uses 1.0).
        freeze_patch_embed: freeze the ViT's patch projection (off).

    Returns ``{"loss", "acc"}`` (``acc``: top-1 percent of ``ctr(q_1, k_2)``'s logits, detached).
    """

    views = ("global_crops",)

    def __init__(
        self,
        backbones: Backbones,
        dim: int = 256,
        projector_hidden_dims: Sequence[int] = (4096, 4096),
        predictor_hidden_dims: Sequence[int] = (4096,),
        predictor_last_bn: bool = True,
        temperature: float = 0.2,
        freeze_patch_embed: bool = False,
    ) -> None:
        super().__init__(backbones)
        check_dims("mocov3", dim=dim)
        check_positive("mocov3", "temperature", temperature)
        projector_hidden = check_hidden_dims("mocov3", "projector_hidden_dims", projector_hidden_dims)
        predictor_hidden = check_hidden_dims("mocov3", "predictor_hidden_dims", predictor_hidden_dims)
        student = backbones.student_vision
        if freeze_patch_embed:
            patch_embed = getattr(student, "patch_embed", None)
            if patch_embed is None or not is_token_model(student):
                raise ValueError(
                    f"mocov3.freeze_patch_embed freezes a ViT's patch projection; the backbone is a "
                    f"{type(student).__name__} without one. Set freeze_patch_embed: false."
                )
            patch_embed.requires_grad_(False)
        self.freeze_patch_embed = bool(freeze_patch_embed)
        backbones.require_vision_teacher()
        backbones.prefer_student_export()
        self.projector = ProjectionMLP(student.embed_dim, projector_hidden, dim, norm="bn", last_norm=True)
        self.predictor = ProjectionMLP(dim, predictor_hidden, dim, norm="bn", last_norm=predictor_last_bn)
        self.teacher_projector = make_teacher(self.projector)
        self.loss = MoCoV3Loss(temperature=temperature)

    def requires(self) -> tuple[str, ...]:
        return ("student_global_features", "teacher_global_features")

    def ema_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [(self.projector, self.teacher_projector)]

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        crops = step.view("global_crops")
        if len(crops) < 2:
            raise ValueError(f"mocov3 compares 2 global crops, the batch has {len(crops)}.")
        b = crops[0].shape[0]
        feats = step.get("student_global_features")
        q1, q2 = (self.predictor(self.projector(feats[v * b : (v + 1) * b])) for v in range(2))
        with torch.no_grad():
            keys = step.get("teacher_global_features")
            with batch_statistics(self.teacher_projector, enabled=self.training):
                k1, k2 = (self.teacher_projector(keys[v * b : (v + 1) * b]) for v in range(2))
        return self.loss(q1, q2, k1, k2)
