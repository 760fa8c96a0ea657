"""CLIP objective (hard targets, optionally Harmony's EMA soft targets; softmax or SigLIP)."""

from __future__ import annotations

import math

import torch
from torch import nn

from hirl_like.losses.clip import ClipLoss
from hirl_like.losses.siglip import SigLipLoss
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objective import Objective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES
from hirl_like.schedules import Progress, cosine


@OBJECTIVES.register("clip")
class ClipObjective(Objective):
    """``L_clip = a * L_hard + (1 - a) * L_soft`` (Harmony eq. 3-5).

    Args:
        soft_targets: add the soft term with targets from the EMA teachers on the same crop and
            caption (Harmony). Off: the standard CLIP loss (a = 1).
        hard_labels_weight_end: ``a`` after the ramp (Harmony: 0.2).
        hard_labels_weight_epochs: ``a`` goes 1 -> end on a cosine over this many epochs, per
            iteration (the reference code's schedule; its README says linear), then stays.
        soft_temperature: temperature of the teachers' target softmax (0.1).
        use_siglip: sigmoid loss instead of softmax (scale init ln 10, bias init -10).
        init_logit_scale: log of the initial scale; default ln(1/0.07) (CLIP) or ln(10) (SigLIP).
        init_logit_bias: SigLIP's bias init.
        max_logit_scale: the scale is clamped to ln(this) after every step (open_clip, SLIP: 100).
    """

    def __init__(
        self,
        backbones: Backbones,
        soft_targets: bool = False,
        hard_labels_weight_end: float = 0.2,
        hard_labels_weight_epochs: float = 10.0,
        soft_temperature: float = 0.1,
        use_siglip: bool = False,
        init_logit_scale: float | None = None,
        init_logit_bias: float = -10.0,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__(backbones)
        if not 0.0 <= hard_labels_weight_end <= 1.0:
            raise ValueError(f"clip.hard_labels_weight_end must lie in [0, 1], got {hard_labels_weight_end}.")
        if max_logit_scale <= 0:
            raise ValueError(f"clip.max_logit_scale must be positive, got {max_logit_scale}.")
        backbones.require_text()
        if soft_targets:
            backbones.require_vision_teacher()
            backbones.require_text_teacher()
        self.soft_targets = soft_targets
        self.hard_labels_weight_end = hard_labels_weight_end if soft_targets else 1.0
        self.hard_labels_weight_epochs = hard_labels_weight_epochs
        self.use_siglip = use_siglip
        if init_logit_scale is None:
            init_logit_scale = math.log(10.0) if use_siglip else math.log(1 / 0.07)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.max_log_scale = math.log(max_logit_scale)
        if use_siglip:
            self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))
            self.loss = SigLipLoss(soft_temperature=soft_temperature)
        else:
            self.logit_bias = None
            self.loss = ClipLoss(soft_temperature=soft_temperature)
        self.hard_weight = 1.0

    def update_schedules(self, progress: Progress) -> dict[str, float]:
        ramp = self.hard_labels_weight_epochs * progress.iters_per_epoch
        self.hard_weight = cosine(1.0, self.hard_labels_weight_end, progress.iteration, ramp) if self.soft_targets else 1.0
        return {"hard_weight": self.hard_weight, "logit_scale": float(self.logit_scale.detach().exp())}

    def requires(self) -> tuple[str, ...]:
        soft = ("teacher_image_embedding", "teacher_text_embedding") if self.soft_targets else ()
        return ("student_image_embedding", "student_text_embedding", *soft)

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        teacher_image = teacher_text = None
        if self.soft_targets and self.hard_weight < 1.0:  # teachers run only while the soft term counts
            teacher_image = step.get("teacher_image_embedding")
            teacher_text = step.get("teacher_text_embedding")
        scale = self.logit_scale.float().exp()
        args = (step.get("student_image_embedding"), step.get("student_text_embedding"), scale)
        if self.logit_bias is not None:
            args = (*args, self.logit_bias.float())
        return self.loss(
            *args, hard_weight=self.hard_weight, teacher_image_features=teacher_image, teacher_text_features=teacher_text
        )

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.logit_scale.clamp_(0.0, self.max_log_scale)
