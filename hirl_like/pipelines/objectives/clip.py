"""CLIP objective (hard targets, optionally Harmony's EMA soft targets; softmax or SigLIP)."""

from __future__ import annotations

import math

import torch
from torch import nn

from hirl_like.losses.clip import ClipLoss
from hirl_like.losses.siglip import SigLipLoss
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.forward_table import ForwardKey, forward_key
from hirl_like.pipelines.forwards.vision import IMAGE_MASKS
from hirl_like.pipelines.objective import Objective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES
from hirl_like.schedules import Progress, Span, check_span, cosine


@OBJECTIVES.register("clip")
class ClipObjective(Objective):
    """``L_clip = a * L_hard + (1 - a) * L_soft`` (Harmony eq. 3-5).

    Args:
        soft_targets: add the soft term with targets from the EMA teachers on the same crop and
            caption (Harmony). Off: the standard CLIP loss (a = 1).
        hard_labels_weight_end: ``a`` after the ramp (Harmony: 0.2).
        hard_labels_weight_epochs: ``a`` goes 1 -> end on a cosine over this many epochs (or this
            share of the run, e.g. ``"40%"`` = the paper's 10 of 25 epochs), per iteration (the
            reference code's schedule; its README says linear), then stays.
        soft_temperature: temperature of the teachers' target softmax (0.1).
        use_siglip: sigmoid loss instead of softmax (scale init ln 10, bias init -10).
        init_logit_scale: log of the initial scale; default ln(1/0.07) (CLIP) or ln(10) (SigLIP).
        init_logit_bias: SigLIP's bias init.
        max_logit_scale: the scale is clamped to ln(this) after every step (open_clip, SLIP: 100).
        image_mask: ``none`` (the paper's main recipe), ``random`` or ``attentive``: drop a share
            ``image_mask_ratio`` of crop 1's patches from the student's CLIP image (Harmony Appendix
            D): at random per image, or the patches the EMA teacher's [CLS] attends to least. The
            teachers still see the whole crop.
        image_mask_ratio: the share of patches dropped (0.5).
        chunk_size: compute the contrastive logits in checkpointed row blocks of this many rows
            (memory c x N instead of B x N per direction, same loss and gradients; see
            ``ClipLoss``/``SigLipLoss``); null = one block (the default).
    """

    def __init__(
        self,
        backbones: Backbones,
        soft_targets: bool = False,
        hard_labels_weight_end: float = 0.2,
        hard_labels_weight_epochs: Span = 10.0,
        soft_temperature: float = 0.1,
        use_siglip: bool = False,
        init_logit_scale: float | None = None,
        init_logit_bias: float = -10.0,
        max_logit_scale: float = 100.0,
        image_mask: str = "none",
        image_mask_ratio: float = 0.5,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(backbones)
        if not 0.0 <= hard_labels_weight_end <= 1.0:
            raise ValueError(f"clip.hard_labels_weight_end must lie in [0, 1], got {hard_labels_weight_end}.")
        if max_logit_scale <= 0:
            raise ValueError(f"clip.max_logit_scale must be positive, got {max_logit_scale}.")
        if image_mask not in IMAGE_MASKS:
            raise ValueError(f"clip.image_mask must be one of {', '.join(IMAGE_MASKS)}, got {image_mask!r}.")
        if not 0.0 <= image_mask_ratio < 1.0:
            raise ValueError(f"clip.image_mask_ratio must lie in [0, 1), got {image_mask_ratio}.")
        backbones.require_text()
        if image_mask == "attentive":
            backbones.require_vision_teacher()
        self.image_key = (
            forward_key("student_image_embedding") if image_mask == "none"
            else forward_key("student_masked_image_embedding", mode=image_mask, ratio=float(image_mask_ratio))
        )
        if soft_targets:
            backbones.require_vision_teacher()
            backbones.require_text_teacher()
        self.soft_targets = soft_targets
        self.hard_labels_weight_end = hard_labels_weight_end if soft_targets else 1.0
        self.hard_labels_weight_epochs = check_span(hard_labels_weight_epochs, "clip.hard_labels_weight_epochs")
        self.use_siglip = use_siglip
        if init_logit_scale is None:
            init_logit_scale = math.log(10.0) if use_siglip else math.log(1 / 0.07)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.max_log_scale = math.log(max_logit_scale)
        if use_siglip:
            self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))
            self.loss = SigLipLoss(soft_temperature=soft_temperature, chunk_size=chunk_size)
        else:
            self.logit_bias = None
            self.loss = ClipLoss(soft_temperature=soft_temperature, chunk_size=chunk_size)
        self.hard_weight = 1.0

    def update_schedules(self, progress: Progress) -> dict[str, float]:
        ramp = progress.iterations(self.hard_labels_weight_epochs)
        self.hard_weight = cosine(1.0, self.hard_labels_weight_end, progress.iteration, ramp) if self.soft_targets else 1.0
        return {"hard_weight": self.hard_weight, "logit_scale": float(self.logit_scale.detach().exp())}

    def requires(self) -> tuple[ForwardKey | str, ...]:
        soft = ("teacher_image_embedding", "teacher_text_embedding") if self.soft_targets else ()
        return (self.image_key, "student_text_embedding", *soft)

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        teacher_image = teacher_text = None
        if self.soft_targets and self.hard_weight < 1.0:  # teachers run only while the soft term counts
            teacher_image = step.get("teacher_image_embedding")
            teacher_text = step.get("teacher_text_embedding")
        scale = self.logit_scale.float().exp()
        args = (step.get(self.image_key), step.get("student_text_embedding"), scale)
        if self.logit_bias is not None:
            args = (*args, self.logit_bias.float())
        out = self.loss(
            *args, hard_weight=self.hard_weight, teacher_image_features=teacher_image, teacher_text_features=teacher_text
        )
        if teacher_image is not None:
            out.update(self.teacher_diagnostics(teacher_image, teacher_text, self.loss.soft_temperature))
        return out

    @staticmethod
    @torch.no_grad()
    def teacher_diagnostics(teacher_image: torch.Tensor, teacher_text: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
        """How informative the soft targets are, on this rank's batch.

        ``teacher_acc``: percent of images whose most similar caption under the EMA teachers is
        their own (chance: 100 / B); ``target_entropy``: mean entropy (nats) of the image->text
        targets ``softmax(I_t T_t^T / temperature)``, ln B when they are uniform.
        """
        sim = teacher_image.float() @ teacher_text.float().T  # (B, B)
        labels = torch.arange(sim.shape[0], device=sim.device)
        log_q = torch.log_softmax(sim / temperature, dim=-1)
        return {
            "teacher_acc": (sim.argmax(dim=-1) == labels).float().mean() * 100,
            "target_entropy": -(log_q.exp() * log_q).sum(dim=-1).mean(),
        }

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.logit_scale.clamp_(0.0, self.max_log_scale)
