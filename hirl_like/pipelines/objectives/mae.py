"""MAE objective: reconstruct normalised pixels of randomly removed patches."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hirl_like.data.masking import random_masking
from hirl_like.losses.mae import MAELoss
from hirl_like.models.decoders import MAEDecoder
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objective import Objective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES
from hirl_like.schedules import Progress, linear


@OBJECTIVES.register("mae")
class MAEObjective(Objective):
    """The student ViT encodes only the visible 25% of patches; a decoder with fixed 2-D sin-cos
    position embeddings predicts the pixels of every patch; MSE on the removed patches of
    per-patch normalised targets.

    Args:
        mask_ratio: fraction of patches removed per image (0.75).
        mask_ratio_schedule: ``[start, end]``: the ratio goes linearly from start to end over the
            whole run, per iteration, instead of staying at ``mask_ratio`` (Harmony Appendix D's
            mask-ratio scheduler); null keeps it fixed.
        crops: how many global crops to reconstruct; Harmony reconstructs both and adds the two
            losses (Appendix D.2), so the term is ``crops`` x the mean per-crop loss.
        decoder_dim / decoder_depth / decoder_heads: 512 / 8 / 16 (MAE).
        norm_pix_loss: per-patch normalised targets (MAE's best setting).
    """

    views = ("global_crops",)  # its token-drop forward is its own: no shared forward

    def __init__(
        self,
        backbones: Backbones,
        mask_ratio: float = 0.75,
        mask_ratio_schedule: Sequence[float] | None = None,
        crops: int = 2,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__(backbones)
        if crops < 1:
            raise ValueError(f"mae.crops must be >= 1, got {crops}.")
        vit = backbones.student_vision
        patch = vit.patch_embed.patch_size[0]
        for ratio in (mask_ratio, *(mask_ratio_schedule or ())):
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"mae mask ratios must lie in [0, 1), got {ratio} (mask_ratio / mask_ratio_schedule).")
        if mask_ratio_schedule is not None and len(mask_ratio_schedule) != 2:
            raise ValueError(f"mae.mask_ratio_schedule is [start, end], got {list(mask_ratio_schedule)}.")
        self.mask_ratio = mask_ratio
        self.mask_ratio_schedule = None if mask_ratio_schedule is None else tuple(map(float, mask_ratio_schedule))
        self.crops = crops
        self.decoder = MAEDecoder(vit.grid_size, vit.embed_dim, patch, 3, decoder_dim, decoder_depth, decoder_heads)
        self.loss = MAELoss(patch_size=patch, norm_pix_loss=norm_pix_loss)

    def update_schedules(self, progress: Progress) -> dict[str, float]:
        if self.mask_ratio_schedule is not None:
            self.mask_ratio = linear(*self.mask_ratio_schedule, progress.iteration, progress.total_iterations)
        return {"mask_ratio": self.mask_ratio}

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        crops = step.view("global_crops")
        if len(crops) < self.crops:
            raise ValueError(f"mae.crops={self.crops} but the batch has {len(crops)} global crops; lower mae.crops.")
        images = torch.cat(crops[: self.crops])  # both crops in one encoder/decoder pass
        vit = self.backbones.student_vision
        ids_keep, mask, ids_restore = random_masking(images.shape[0], vit.num_patches, self.mask_ratio, step.generator)
        ids_keep, mask, ids_restore = (t.to(images.device) for t in (ids_keep, mask, ids_restore))
        tokens = vit.forward_tokens(images, ids_keep=ids_keep)
        pred = self.decoder(tokens, ids_restore)
        out = self.loss(pred, images, mask)
        # Every image has the same number of removed patches, so the mean over the stacked crops
        # is the mean of the per-crop losses; Harmony adds them.
        out["loss"] = out["loss"] * self.crops
        return out
