"""Masked language modelling objective on the captions."""

from __future__ import annotations

import torch

from hirl_like.losses.mlm import MLMLoss
from hirl_like.models.decoders import MLMDecoder
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.forward_table import ForwardKey, forward_key
from hirl_like.pipelines.objective import Objective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES


@OBJECTIVES.register("mlm")
class MLMObjective(Objective):
    """20% of the real caption tokens become the mask id (no 80/10/10 split); the student text
    encoder reads the masked caption bidirectionally (padding hidden) and a 4-layer, 512-wide
    decoder predicts the original ids; CE on masked positions only.

    Bidirectional by design: the public Harmony code ran MLM through CLIP's causal mask, so a
    masked word saw only its left context, which makes MLM a left-to-right guess.
    """

    views = ("text",)  # the targets: the original ids

    def __init__(
        self,
        backbones: Backbones,
        mask_prob: float = 0.2,
        decoder_width: int = 512,
        decoder_depth: int = 4,
        decoder_heads: int = 8,
    ) -> None:
        super().__init__(backbones)
        backbones.require_text()
        text = backbones.student_text
        self.mask_prob = mask_prob
        self.decoder = MLMDecoder(
            text.width, decoder_width, decoder_depth, decoder_heads, text.vocab_size, text.context_length
        )
        self.loss = MLMLoss()

    def requires(self) -> tuple[ForwardKey, ...]:
        p = self.mask_prob
        return (forward_key("masked_text", mask_prob=p), forward_key("student_masked_text_tokens", mask_prob=p),
                forward_key("text_valid_mask"))

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        _, mask = step.get("masked_text", mask_prob=self.mask_prob)
        features = step.get("student_masked_text_tokens", mask_prob=self.mask_prob)
        # Logits only at the masked positions: (M, V) viewed as M captions of one token each.
        logits = self.decoder(features, padding_mask=~step.get("text_valid_mask"), select=mask)
        targets = step.view("text")[mask]
        out = self.loss(logits.unsqueeze(1), targets.unsqueeze(1), torch.ones_like(targets, dtype=torch.bool).unsqueeze(1))
        out["masked_tokens"] = mask.sum().detach().float()
        return out
