"""HARL objective (Tran et al. 2022): BYOL plus foreground and background BYOL terms, the regions
given by a heuristic mask per image (``data.masks``; :mod:`hirl_like.data.masks`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hirl_like.losses.byol import projection_std
from hirl_like.losses.harl import HARLLoss, TermPair, foreground_on_grid, masked_average_pool
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.forwards.features import is_token_model
from hirl_like.pipelines.objectives.byol import BYOLObjective, two_global_crops
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES

MASKS_FIX = ("set data.masks (felzenszwalb | saliency | folder) and transform.name=MaskedMultiCropTransform, "
             "which crops and flips each mask with its image into batch['global_masks']")


@OBJECTIVES.register("harl")
class HARLObjective(BYOLObjective):
    """BYOL (:class:`~hirl_like.pipelines.objectives.byol.BYOLObjective`, same heads and target)
    on three features of each global crop v in {1, 2}:

    - whole image: the pooled feature (ResNet: mean of the map; ViT: [CLS]);
    - foreground / background: the feature map F_v (G*B, C, h, w) (ResNet last stage, ViT patch
      tokens; :mod:`hirl_like.pipelines.forwards.feature_maps`) mask-average-pooled with the
      crop's mask M_v (``batch["global_masks"][v]`` (B, 1, S, S), cropped and flipped with the
      image) resized to (h, w) (:func:`~hirl_like.losses.harl.foreground_on_grid`)::

        v_fg = sum F_v * m / (sum m + 1),   v_bg = sum F_v * (1 - m) / (sum (1 - m) + 1)

    Each goes through the SHARED online projector + predictor and the target (EMA) projector,
    the target pooled with the same mask from the EMA backbone's map of the same crop. Per term
    t, ``L_t = [2 - 2 cos(p^t_1, sg(z'^t_2))] + [2 - 2 cos(p^t_2, sg(z'^t_1))]``, and

        L = b * L_byol + (1 - b) * (a * L_fg + (1 - a) * L_bg)         (loss_type byol+f+b)

    (other ``loss_type`` values: :mod:`hirl_like.losses.harl`). All three terms are computed and
    logged whatever ``loss_type`` (``harl/byol``, ``harl/fg``, ``harl/bg``), as the reference.

    Args:
        dim, projector_hidden_dims, predictor_hidden_dims: the BYOL heads (256, [4096], [4096]).
        loss_type: byol+f+b (default), byol+f, f+b, f, byol (reference names accepted).
        alpha: a (0.5). beta: b (0.5).
        mask_threshold: a feature cell is foreground when the share of foreground pixels it
            covers is above this (0: any, as the reference's resize then ``> 0``).

    Returns ``{"loss", "byol", "fg", "bg", "z_std", "fg_share"}`` (``fg_share``: mean share of
    foreground cells on the feature grid, detached).
    """

    views = ("global_crops", "global_masks")

    def __init__(
        self,
        backbones: Backbones,
        dim: int = 256,
        projector_hidden_dims: Sequence[int] = (4096,),
        predictor_hidden_dims: Sequence[int] = (4096,),
        loss_type: str = "byol+f+b",
        alpha: float = 0.5,
        beta: float = 0.5,
        mask_threshold: float = 0.0,
    ) -> None:
        super().__init__(backbones, dim, projector_hidden_dims, predictor_hidden_dims)
        HARLObjective.validate_config({"mask_threshold": mask_threshold}, "harl")
        self.mask_threshold = float(mask_threshold)
        self.loss = HARLLoss(loss_type, alpha, beta)

    @staticmethod
    def validate_config(node: Mapping[str, Any], path: str) -> None:
        """Load-time check of ``loss_type``, ``alpha``, ``beta`` and ``mask_threshold`` (ValueError)."""
        threshold = node.get("mask_threshold", 0.0)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
            raise ValueError(f"{path}.mask_threshold must be a number in [0, 1), got {threshold!r}.")
        HARLLoss(node.get("loss_type", "byol+f+b"), node.get("alpha", 0.5), node.get("beta", 0.5))

    def requires(self) -> tuple[str, ...]:
        # a CNN reads only the maps (and pools them); a ViT its [CLS] and patch tokens (one pass)
        return ("student_global_feature_maps", "teacher_global_feature_maps",
                "student_global_features", "teacher_global_features")

    def _masks(self, step: StepCache, b: int) -> list[torch.Tensor]:
        masks = step.view("global_masks", default=None)
        if masks is None or len(masks) < 2:
            raise ValueError(f"harl needs a mask per global crop, the batch has {0 if masks is None else len(masks)}: "
                             f"{MASKS_FIX}.")
        if masks[0].shape[0] != b or masks[0].dim() != 4:
            raise ValueError(f"batch['global_masks'] must hold (B, 1, S, S) masks of B={b}, got {tuple(masks[0].shape)}.")
        return list(masks[:2])

    def _features(self, step: StepCache, who: str) -> tuple[torch.Tensor, torch.Tensor]:
        """((G*B, C) pooled, (G*B, C, h, w) map) of the student or the teacher."""
        maps = step.get(f"{who}_global_feature_maps")
        backbone = step.backbones.student_vision if who == "student" else step.backbones.teacher_vision
        pooled = step.get(f"{who}_global_features") if is_token_model(backbone) else maps.mean(dim=(2, 3))
        return pooled, maps

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        b = two_global_crops(step, "harl")
        masks = self._masks(step, b)
        pooled, maps = self._features(step, "student")
        grid = tuple(maps.shape[-2:])
        fg = [foreground_on_grid(m, grid, self.mask_threshold).to(maps.dtype) for m in masks]  # (B, 1, h, w)
        rows = [slice(v * b, (v + 1) * b) for v in range(2)]
        inputs = {
            "byol": [pooled[r] for r in rows],
            "fg": [masked_average_pool(maps[r], fg[v]) for v, r in enumerate(rows)],
            "bg": [masked_average_pool(maps[r], 1 - fg[v]) for v, r in enumerate(rows)],
        }
        with torch.no_grad():
            t_pooled, t_maps = self._features(step, "teacher")
            t_inputs = {
                "byol": [t_pooled[r] for r in rows],
                "fg": [masked_average_pool(t_maps[r], fg[v].to(t_maps.dtype)) for v, r in enumerate(rows)],
                "bg": [masked_average_pool(t_maps[r], (1 - fg[v]).to(t_maps.dtype)) for v, r in enumerate(rows)],
            }
        pairs, z_online = {}, None
        for term in ("byol", "fg", "bg"):
            (z1, p1), (_, p2) = (self.online(x) for x in inputs[term])
            t1, t2 = (self.target(x) for x in t_inputs[term])
            pairs[term] = TermPair(p1, p2, t1, t2)
            z_online = z1 if term == "byol" else z_online
        out = self.loss(pairs["byol"], pairs["fg"], pairs["bg"])
        out["z_std"] = projection_std(z_online)  # type: ignore[arg-type]
        out["fg_share"] = torch.stack([m.mean() for m in fg]).mean().detach()
        return out
