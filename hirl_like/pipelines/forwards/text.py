"""Shared forwards of the text student and its EMA teacher.

One teacher forward of the unmasked caption serves soft CLIP and text distillation (Harmony
configs set ``text.causal: false``, so both ask for the same mode), and the student's forward of
the masked caption serves MLM and text distillation (when both use the same ``mask_prob``).

Captions arrive cut to the batch length L <= context C (``hirl_like/data/tokenizer.py``). Every
forward here works at that L; the one thing that must not depend on it is the MLM mask, which is
drawn from the step's generator: :func:`masked_text` draws a (B, C) grid of uniforms and keeps its
first L columns, so a seed masks the same words whether the batch was cut or padded to C.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hirl_like.data.tokenizer import EOT_TOKEN_ID, MASK_TOKEN_ID, PAD_TOKEN_ID, SOT_TOKEN_ID
from hirl_like.losses.mlm import mask_tokens
from hirl_like.pipelines.backbones import l2_normalize
from hirl_like.pipelines.forward_table import SHARED_FORWARDS
from hirl_like.pipelines.step_cache import StepCache


@SHARED_FORWARDS.register("student_text_embedding", views=("text",))
def student_text_embedding(step: StepCache) -> torch.Tensor:
    """(B, E) L2-normalised caption embedding by the student (its own attention mode)."""
    return l2_normalize(step.backbones.student_text(step.view("text")))


@SHARED_FORWARDS.register("text_valid_mask", views=("text",))
def text_valid_mask(step: StepCache) -> torch.Tensor:
    """(B, L) bool, True on real tokens (start .. end token), False on padding."""
    return step.backbones.student_text.valid_mask(step.view("text"))


@SHARED_FORWARDS.register("teacher_text_tokens", views=("text",))
@torch.no_grad()
def teacher_text_tokens(step: StepCache, causal: bool) -> torch.Tensor:
    """(B, L, W) EMA-teacher features of the unmasked caption in the given attention mode, no grad."""
    return step.backbones.teacher_text.forward_tokens(step.view("text"), causal=causal)


@SHARED_FORWARDS.register("teacher_text_embedding", views=("text",), uses=("teacher_text_tokens",))
@torch.no_grad()
def teacher_text_embedding(step: StepCache) -> torch.Tensor:
    """(B, E) L2-normalised teacher caption embedding (pooled teacher_text_tokens in the model's own mode)."""
    teacher = step.backbones.teacher_text
    tokens = step.get("teacher_text_tokens", causal=bool(teacher.causal))
    return l2_normalize(teacher.text_projection(teacher.pool(tokens, step.view("text"))))


@SHARED_FORWARDS.register("masked_text", views=("text",), uses=("text_valid_mask",))
def masked_text(step: StepCache, mask_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked ids (B, L), mask (B, L) bool): each real word token replaced by the mask id with
    probability ``mask_prob`` (MLM), drawn from the step's generator.

    The draws are made at the text model's full context width C and cut to L: ``torch.rand``
    fills row-major, so a (B, L) draw would hand row 1 the uniforms row 0 had at width C, and the
    masked words (hence MLM and text distillation) would change with the batch length.
    """
    tokens = step.view("text")
    length = tokens.shape[1]
    width = max(length, int(step.backbones.student_text.context_length))
    padded = F.pad(tokens.cpu(), (0, width - length), value=PAD_TOKEN_ID)  # (B, C): padding is never masked
    masked, mask = mask_tokens(
        padded, mask_prob, MASK_TOKEN_ID, (SOT_TOKEN_ID, EOT_TOKEN_ID), PAD_TOKEN_ID, step.generator
    )
    masked, mask = masked[:, :length], mask[:, :length]
    mask = mask & step.get("text_valid_mask").cpu()  # never mask padding after the end token
    masked = torch.where(mask, masked, tokens.cpu())
    return masked.to(tokens.device), mask.to(tokens.device)


@SHARED_FORWARDS.register("student_masked_text_tokens", uses=("masked_text",))
def student_masked_text_tokens(step: StepCache, mask_prob: float) -> torch.Tensor:
    """(B, L, W) student features of the masked caption, attending in both directions with padding
    keys hidden (so a masked word sees its left and right context)."""
    masked, _ = step.get("masked_text", mask_prob=mask_prob)
    return step.backbones.student_text.forward_tokens(masked, causal=False)
