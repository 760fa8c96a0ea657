"""Forwards shared between objectives within one training step, each computed at most once.

Objectives ask the cache, never the models directly, so e.g. the teacher ViT's forward on the
unmasked global crops serves both iBOT's targets and CLIP's soft image targets, one text
teacher forward serves soft CLIP and text distillation, and the student's masked-caption forward
serves MLM and text distillation. Teacher forwards run under ``torch.no_grad``.

The student's forward on the iBOT-masked global crops also serves CLIP: iBOT leaves about half the
images unmasked (``pred_ratio [0, 0.3]``), and an unmasked row of crop 1 is exactly CLIP's input,
so CLIP's student image pass runs only on the rows iBOT masked. For that, iBOT draws its masks in
:meth:`Objective.prepare <hirl_like.pipelines.objective.Objective.prepare>`, before any objective's
forward, whatever the order of objectives in the config.

Randomness of a step (iBOT block masks, MAE token drop, MLM masking) comes from generators
seeded by (seed, iteration, rank), so a resumed run draws exactly the same masks.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from hirl_like.data.captions import mix_seed
from hirl_like.pipelines.backbones import Backbones, l2_normalize
from hirl_like.schedules import Progress

T = TypeVar("T")


_SALT_STEP = 0x57E9


def step_seed(seed: int, iteration: int, rank: int) -> int:
    """A 63-bit seed that differs for every (seed, iteration, rank), identical in every process.

    A pure integer mix (splitmix64), never ``hash()``: string hashing is salted per process
    (PYTHONHASHSEED), which made masks and drop path differ after a restart.
    """
    return mix_seed(_SALT_STEP, seed, iteration, rank) >> 1


class StepCache:
    """Per-step memo of shared forwards.

    Batch keys used: ``global_crops`` (list of (B, 3, H, W)), ``local_crops`` (list),
    ``text`` (B, L) token ids.
    """

    def __init__(self, backbones: Backbones, batch: dict[str, Any], progress: Progress, rank: int = 0) -> None:
        self.backbones = backbones
        self.batch = batch
        self.progress = progress
        seed = step_seed(progress.seed, progress.iteration, rank)
        self.rng = random.Random(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self._memo: dict[str, Any] = {}

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    # -- inputs ------------------------------------------------------------------------------
    @property
    def global_crops(self) -> list[torch.Tensor]:
        crops = self.batch.get("global_crops")
        if not crops:
            raise KeyError("the batch has no 'global_crops'; use a transform that makes them (e.g. MultiCropTransform).")
        return list(crops)

    @property
    def local_crops(self) -> list[torch.Tensor]:
        return list(self.batch.get("local_crops") or [])

    @property
    def text(self) -> torch.Tensor:
        if "text" not in self.batch:
            raise KeyError("the batch has no 'text' tokens; this objective needs an image-caption dataset.")
        return self.batch["text"]

    @property
    def batch_size(self) -> int:
        return self.global_crops[0].shape[0]

    # -- vision ------------------------------------------------------------------------------
    def student_global_masks(self, draw: Callable[[], torch.Tensor]) -> torch.Tensor:
        """(G*B, N) bool patch masks of the student's global crops (True = masked), view-major;
        ``draw`` runs once per step, for the first caller (iBOT's ``prepare``)."""
        return self.memo("student_global_masks", draw)

    def student_masked_global_tokens(self) -> torch.Tensor:
        """(G*B, 1+N, D) student tokens of the global crops with the masks of
        :meth:`student_global_masks` (mask token in masked patches), view-major."""
        if "student_global_masks" not in self._memo:
            raise RuntimeError("student_masked_global_tokens needs student_global_masks(draw) to be called first.")
        masks = self._memo["student_global_masks"]

        def compute() -> torch.Tensor:
            return self.backbones.student_vision.forward_tokens(torch.cat(self.global_crops), mask=masks)

        return self.memo("student_masked_global_tokens", compute)

    def _student_crop1_cls(self) -> torch.Tensor:
        """(B, D) student [CLS] of the unmasked global crop 1.

        Rows that the student's masked forward left unmasked are taken from it (the same input
        through the same network); only the others run again.
        """
        vit, crop1 = self.backbones.student_vision, self.global_crops[0]
        masks = self._memo.get("student_global_masks")
        if masks is None:
            return vit.forward_tokens(crop1)[:, 0]
        cls = self.student_masked_global_tokens()[: crop1.shape[0], 0]
        masked_rows = masks[: crop1.shape[0]].any(dim=1).nonzero()[:, 0]  # rows of crop 1 with a masked patch
        if masked_rows.numel() == 0:
            return cls
        return cls.index_put((masked_rows,), vit.forward_tokens(crop1[masked_rows])[:, 0])

    def student_image_embedding(self) -> torch.Tensor:
        """(B, E) normalised CLIP embedding of global crop 1 by the student."""

        def compute() -> torch.Tensor:
            return l2_normalize(self.backbones.image_projection(self._student_crop1_cls()))

        return self.memo("student_image_embedding", compute)

    def teacher_global_tokens(self) -> torch.Tensor:
        """(G*B, 1+N, D) teacher tokens of the unmasked global crops, view-major, no grad."""

        def compute() -> torch.Tensor:
            with torch.no_grad():
                return self.backbones.teacher_vision.forward_tokens(torch.cat(self.global_crops))

        return self.memo("teacher_global_tokens", compute)

    def teacher_image_embedding(self) -> torch.Tensor:
        """(B, E) normalised teacher CLIP embedding of global crop 1 (reuses teacher_global_tokens)."""

        def compute() -> torch.Tensor:
            with torch.no_grad():
                cls = self.teacher_global_tokens()[: self.batch_size, 0]
                return l2_normalize(self.backbones.teacher_image_projection(cls))

        return self.memo("teacher_image_embedding", compute)

    # -- text --------------------------------------------------------------------------------
    def student_text_embedding(self) -> torch.Tensor:
        """(B, E) normalised caption embedding by the student."""
        return self.memo("student_text_embedding", lambda: l2_normalize(self.backbones.student_text(self.text)))

    def teacher_text_tokens(self, causal: bool | None = None) -> torch.Tensor:
        """(B, L, W) teacher features of the unmasked caption, no grad.

        ``causal=None`` is the text model's own mode; a request in the same mode as the model's
        default shares the forward (Harmony configs set ``text.causal: false``, so soft CLIP and
        text distillation use one teacher forward).
        """
        teacher = self.backbones.teacher_text
        mode = teacher.causal if causal is None else causal

        def compute() -> torch.Tensor:
            with torch.no_grad():
                return teacher.forward_tokens(self.text, causal=mode)

        return self.memo(f"teacher_text_tokens[causal={mode}]", compute)

    def text_valid_mask(self) -> torch.Tensor:
        """(B, L) bool, True on real tokens (start .. end token), False on padding."""
        return self.memo("text_valid_mask", lambda: self.backbones.student_text.valid_mask(self.text))

    def masked_text(self, mask_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked ids (B, L), mask (B, L) bool): each real word token replaced by the mask id with
        probability ``mask_prob`` (MLM); shared by MLM and text distillation."""

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            from hirl_like.data.tokenizer import EOT_TOKEN_ID, MASK_TOKEN_ID, PAD_TOKEN_ID, SOT_TOKEN_ID
            from hirl_like.losses.mlm import mask_tokens

            tokens = self.text
            masked, mask = mask_tokens(
                tokens.cpu(), mask_prob, MASK_TOKEN_ID, (SOT_TOKEN_ID, EOT_TOKEN_ID), PAD_TOKEN_ID, self.generator
            )
            mask = mask & self.text_valid_mask().cpu()  # never mask padding after the end token
            masked = torch.where(mask, masked, tokens.cpu())
            return masked.to(tokens.device), mask.to(tokens.device)

        return self.memo(f"masked_text[{mask_prob}]", compute)

    def student_masked_text_tokens(self, mask_prob: float) -> torch.Tensor:
        """(B, L, W) student features of the masked caption, attending in both directions with
        padding keys hidden (so a masked word sees its left and right context)."""

        def compute() -> torch.Tensor:
            masked, _ = self.masked_text(mask_prob)
            return self.backbones.student_text.forward_tokens(masked, causal=False)

        return self.memo(f"student_masked_text_tokens[{mask_prob}]", compute)

    def teacher_text_embedding(self) -> torch.Tensor:
        """(B, E) normalised teacher caption embedding (reuses teacher_text_tokens)."""

        def compute() -> torch.Tensor:
            with torch.no_grad():
                teacher = self.backbones.teacher_text
                pooled = teacher.pool(self.teacher_text_tokens(), self.text)
                return l2_normalize(teacher.text_projection(pooled))

        return self.memo("teacher_text_embedding", compute)

