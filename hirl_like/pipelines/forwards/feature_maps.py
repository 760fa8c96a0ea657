"""Shared forwards of spatial feature maps of the global crops, for any vision backbone.

Objectives that pool regions of an image (HARL's foreground and background features) read a
(G*B, C, h, w) map per crop:

- a CNN (a backbone with ``forward_features``, e.g. :class:`~hirl_like.models.resnet.ResNet`): its
  last stage (ResNet ``layer4``: 7x7 for a 224-px crop, stride 32; stride 8 with the small stem),
  one pass per crop so that every BatchNorm normalises over one view's batch, as the pooled
  forwards of :mod:`hirl_like.pipelines.forwards.features`;
- a ViT: its patch tokens as a map, read from the token forward of the same crops
  (``student_global_tokens`` / ``teacher_global_tokens``), so the [CLS] features of the same
  crops cost no extra pass: ``tokens[:, 1:]`` (G*B, N, D) -> (G*B, D, H/p, W/p) in row-major
  patch order.

Rows are view-major: rows ``v*B:(v+1)*B`` are crop v. The teacher's CNN pass uses BatchNorm batch
statistics while the student trains (:func:`~hirl_like.pipelines.backbones.batch_statistics`).

Note: on a CNN these maps and ``*_global_features`` are separate passes; an objective reading
both should pool the map itself (a ResNet's pooled feature is the mean of its map over h, w).
"""

from __future__ import annotations

import torch
from torch import nn

from hirl_like.pipelines.backbones import batch_statistics
from hirl_like.pipelines.forward_table import SHARED_FORWARDS
from hirl_like.pipelines.forwards.features import is_token_model
from hirl_like.pipelines.step_cache import StepCache


def patch_tokens_as_map(vit: nn.Module, tokens: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """(B, 1+N, D) ViT tokens ([CLS] first) of (H, W) images -> (B, D, H/p, W/p) patch map."""
    patch = getattr(getattr(vit, "patch_embed", None), "patch_size", None)
    if patch is None:
        raise ValueError(f"{type(vit).__name__} has no patch_embed.patch_size; cannot lay its tokens out as a map.")
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    h, w = image_hw[0] // ph, image_hw[1] // pw
    patches = tokens[:, 1:]
    if patches.shape[1] != h * w:
        raise ValueError(f"{patches.shape[1]} patch tokens do not make a {h}x{w} map for {image_hw} images.")
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def _cnn_maps(backbone: nn.Module, crops: list[torch.Tensor]) -> torch.Tensor:
    if not callable(getattr(backbone, "forward_features", None)):
        raise ValueError(
            f"{type(backbone).__name__} has no forward_features(images) -> (B, C, h, w); a feature-map "
            "objective (harl) needs a ResNet or a ViT."
        )
    return torch.cat([backbone.forward_features(crop) for crop in crops])


@SHARED_FORWARDS.register("student_global_feature_maps", views=("global_crops",), uses=("student_global_tokens",))
def student_global_feature_maps(step: StepCache) -> torch.Tensor:
    """(G*B, C, h, w) student feature maps of the global crops (CNN last stage or ViT patch tokens)."""
    backbone, crops = step.backbones.student_vision, step.view("global_crops")
    if is_token_model(backbone):
        return patch_tokens_as_map(backbone, step.get("student_global_tokens"), tuple(crops[0].shape[-2:]))
    return _cnn_maps(backbone, crops)


@SHARED_FORWARDS.register("teacher_global_feature_maps", views=("global_crops",), uses=("teacher_global_tokens",))
@torch.no_grad()
def teacher_global_feature_maps(step: StepCache) -> torch.Tensor:
    """(G*B, C, h, w) EMA-teacher feature maps of the global crops, no grad (batch statistics in
    the teacher's BatchNorms while the student trains)."""
    backbones, crops = step.backbones, step.view("global_crops")
    teacher = backbones.teacher_vision
    if teacher is None:
        raise RuntimeError(
            "teacher_global_feature_maps needs the EMA vision teacher; the objective reading it must call "
            "backbones.require_vision_teacher() in __init__."
        )
    if is_token_model(teacher):
        return patch_tokens_as_map(teacher, step.get("teacher_global_tokens"), tuple(crops[0].shape[-2:]))
    with batch_statistics(teacher, enabled=backbones.student_vision.training):
        return _cnn_maps(teacher, crops)
