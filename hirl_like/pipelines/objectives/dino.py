"""DINO objective (Caron et al. 2021): iBOT's [CLS] cross-view self-distillation on its own, on a ViT or a ResNet."""

from __future__ import annotations

import torch

from hirl_like.losses.dino import DINOLoss
from hirl_like.models.heads import DINOHead
from hirl_like.pipelines.backbones import Backbones, batch_statistics
from hirl_like.pipelines.objective import HeadDistillationObjective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES
from hirl_like.schedules import Span, check_span


@OBJECTIVES.register("dino")
class DINOObjective(HeadDistillationObjective):
    """Student: the unmasked global crops + the local crops, pooled features through a DINO head.
    Teacher (EMA backbone + EMA head): the global crops. The features are the shared forwards
    ``student_global_features`` / ``student_local_features`` / ``teacher_global_features``
    (:mod:`hirl_like.pipelines.forwards.features`): on a ViT the [CLS] tokens of
    ``student_global_tokens`` ... (so the teacher pass is also iBOT's targets and CLIP's soft
    image targets), on a ResNet its pooled output (DINO's ResNet-50 recipe adds
    ``use_bn_in_head: true``). Loss: for each teacher view q and student
    view v != q, ``H(softmax((t_q - c) / T_t), log_softmax(s_v / T_s))``, averaged over pairs
    (:class:`DINOLoss`).

    Defaults are those of DINO's ``main_dino.py`` (ViT-S/16).

    Args:
        out_dim: prototypes K (DINO: 65536).
        head_hidden_dim, head_bottleneck_dim, head_nlayers: the head MLP (d -> 2048 -> 2048 -> 256).
        use_bn_in_head: BatchNorm in the head MLP (DINO: off for ViTs).
        norm_last_layer: fix the norm of the last layer's rows at 1 (DINO default: on).
        teacher_temp / warmup_teacher_temp / warmup_teacher_temp_epochs: the teacher temperature
            goes linearly from the warm-up value to ``teacher_temp`` per iteration (DINO defaults:
            0.04 -> 0.04, i.e. no warm-up; its 800-epoch ViT-S run used 0.04 -> 0.07 over 30 epochs).
        student_temp, center_momentum: 0.1 and 0.9.
        freeze_last_layer: epochs during which the head's last layer gets no update (DINO: 1).
    """

    views = ("global_crops", "local_crops")

    def __init__(
        self,
        backbones: Backbones,
        out_dim: int = 65536,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_nlayers: int = 3,
        use_bn_in_head: bool = False,
        norm_last_layer: bool = True,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: Span = 0.0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        freeze_last_layer: Span = 1.0,
    ) -> None:
        super().__init__(backbones)
        for name, value in (("teacher_temp", teacher_temp), ("warmup_teacher_temp", warmup_teacher_temp)):
            if not value > 0:
                raise ValueError(f"dino.{name} must be > 0, got {value}.")
        check_span(warmup_teacher_temp_epochs, "dino.warmup_teacher_temp_epochs")
        check_span(freeze_last_layer, "dino.freeze_last_layer")
        backbones.require_vision_teacher()
        dim = backbones.student_vision.embed_dim
        head = DINOHead(
            dim, out_dim, head_hidden_dim, head_bottleneck_dim, head_nlayers, use_bn=use_bn_in_head,
            norm_last_layer=norm_last_layer,
        )
        self.setup_distillation(head, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, freeze_last_layer)
        # The crop counts are set from the batch in forward (they cannot drift from the transform).
        self.loss = DINOLoss(out_dim, 2, 0, student_temp, center_momentum)

    def requires(self) -> tuple[str, ...]:
        return ("student_global_features", "student_local_features", "teacher_global_features")

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        crops, local = step.view("global_crops"), step.view("local_crops", default=[])
        if len(crops) + len(local) < 2:
            raise ValueError("dino compares different views: the batch needs at least 2 crops (global + local).")
        # Views are stacked view-major: rows v*B:(v+1)*B are view v (global crops first).
        student_feats = step.get("student_global_features")
        if local:
            student_feats = torch.cat([student_feats, step.get("student_local_features")])
        student_out = self.head(student_feats)
        with torch.no_grad(), batch_statistics(self.teacher_head, enabled=self.training):
            # DINO's teacher runs in train mode: a BatchNorm head (use_bn_in_head) uses batch statistics
            teacher_out = self.teacher_head(step.get("teacher_global_features"))
        self.loss.global_crops, self.loss.local_crops = len(crops), len(local)
        return self.loss(student_out, teacher_out, self.teacher_temp)
