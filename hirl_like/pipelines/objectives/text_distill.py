"""Text self-distillation objective (Harmony): iBOT's patch term applied to caption tokens."""

from __future__ import annotations

import torch

from hirl_like.losses.text_distill import TextDistillLoss
from hirl_like.models.heads import DINOHead
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.forward_table import ForwardKey, forward_key
from hirl_like.pipelines.objective import HeadDistillationObjective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES
from hirl_like.schedules import Span


@OBJECTIVES.register("text_distill")
class TextDistillObjective(HeadDistillationObjective):
    """The EMA text teacher reads the unmasked caption (its forward is shared with CLIP's soft
    text targets), the student the masked caption (the MLM forward, shared); both go through an
    MLP head (512 -> 1024 -> 256 -> weight-normed K/4); centred and sharpened CE per masked token.

    Args:
        out_dim: head prototypes (K/4 = 2048 for K = 8192).
        head_hidden_dim, head_bottleneck_dim, head_nlayers: 1024, 256, 2.
        mask_prob: caption masking probability (shared with MLM when equal).
        teacher_temp / warmup_teacher_temp / warmup_teacher_temp_epochs: as iBOT's patch term.
        student_temp, center_momentum: 0.1, 0.9.
    """

    def __init__(
        self,
        backbones: Backbones,
        out_dim: int = 2048,
        head_hidden_dim: int = 1024,
        head_bottleneck_dim: int = 256,
        head_nlayers: int = 2,
        mask_prob: float = 0.2,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: Span = 3.0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__(backbones)
        backbones.require_text_teacher()
        width = backbones.student_text.width
        head = DINOHead(width, out_dim, head_hidden_dim, head_bottleneck_dim, head_nlayers)
        self.setup_distillation(head, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)
        self.loss = TextDistillLoss(out_dim, student_temp, center_momentum)
        self.mask_prob = mask_prob

    def requires(self) -> tuple[ForwardKey, ...]:
        p = self.mask_prob
        return (forward_key("masked_text", mask_prob=p), forward_key("student_masked_text_tokens", mask_prob=p),
                forward_key("teacher_text_tokens", causal=False), forward_key("text_valid_mask"))

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        _, mask = step.get("masked_text", mask_prob=self.mask_prob)  # real tokens only, so mask & valid == mask
        # the student head runs only where the loss scores: (#masked, K)
        student = self.head(step.get("student_masked_text_tokens", mask_prob=self.mask_prob)[mask])
        with torch.no_grad():
            teacher = self.teacher_head(step.get("teacher_text_tokens", causal=False))
        return self.loss(student, teacher, mask, step.get("text_valid_mask"), self.teacher_temp)
