"""Shared forwards of pooled image features, for any vision backbone (ViT or CNN).

Objectives that need one vector per crop (DINO's [CLS] term, MoCo v2/v3, SimSiam, SwAV, HIRL)
read these instead of the token forwards, so they run on a ResNet as on a ViT:

- a ViT (a backbone with ``forward_tokens``) gives its [CLS] token, read from the token forward
  of the same crops (``student_global_tokens`` ...), so whatever else reads those forwards shares
  the pass: the EMA teacher's ``teacher_global_tokens`` are also iBOT's targets and CLIP's soft
  image targets, and DINO's [CLS] term next to iBOT costs no extra teacher pass.
- a CNN (``backbone(images) -> (B, D)`` pooled, e.g. :class:`~hirl_like.models.resnet.ResNet`)
  runs on each crop separately, so that every BatchNorm normalises over one view's batch, as
  the query and key encoders of MoCo v2/v3 and SimSiam's encoder do (SwAV's and DINO's reference
  code run the crops of one size in one pass instead; only the BatchNorm statistics differ).

Rows are view-major, as everywhere: rows ``v*B:(v+1)*B`` of a (V*B, D) value are crop v.
Every global crop is encoded, even by objectives that read only some of them (asymmetric MoCo v2
uses the student features of crop 0 only): the price of one pass shared by all readers.

The teacher's CNN forward uses BatchNorm batch statistics while the student trains (the reference
momentum encoders run in train mode) without touching the teacher's running statistics:
:func:`~hirl_like.pipelines.backbones.batch_statistics`.
"""

from __future__ import annotations

import torch
from torch import nn

from hirl_like.pipelines.backbones import batch_statistics
from hirl_like.pipelines.forward_table import SHARED_FORWARDS
from hirl_like.pipelines.step_cache import StepCache


def is_token_model(backbone: nn.Module) -> bool:
    """True for a backbone that gives token sequences (the ViT: ``forward_tokens``, [CLS] at index 0)."""
    return callable(getattr(backbone, "forward_tokens", None))


def _per_view(backbone: nn.Module, crops: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([backbone(crop) for crop in crops])


@SHARED_FORWARDS.register("student_global_features", views=("global_crops",), uses=("student_global_tokens",))
def student_global_features(step: StepCache) -> torch.Tensor:
    """(G*B, D) pooled student features of the global crops: the ViT's [CLS] (of
    ``student_global_tokens``) or the CNN's pooled output, one pass per crop."""
    backbone = step.backbones.student_vision
    if is_token_model(backbone):
        return step.get("student_global_tokens")[:, 0]
    return _per_view(backbone, step.view("global_crops"))


@SHARED_FORWARDS.register("student_local_features", views=("local_crops",), uses=("student_local_tokens",))
def student_local_features(step: StepCache) -> torch.Tensor:
    """(L*B, D) pooled student features of the local crops: the ViT's [CLS] (of
    ``student_local_tokens``) or the CNN's pooled output, one pass per crop."""
    backbone = step.backbones.student_vision
    if is_token_model(backbone):
        return step.get("student_local_tokens")[:, 0]
    return _per_view(backbone, step.view("local_crops"))


@SHARED_FORWARDS.register("teacher_global_features", views=("global_crops",), uses=("teacher_global_tokens",))
@torch.no_grad()
def teacher_global_features(step: StepCache) -> torch.Tensor:
    """(G*B, D) pooled EMA-teacher features of the global crops, no grad: the ViT's [CLS] (of
    ``teacher_global_tokens``) or the CNN's pooled output, one pass per crop with BatchNorm batch
    statistics while the student trains."""
    backbones = step.backbones
    teacher = backbones.teacher_vision
    if teacher is None:
        raise RuntimeError(
            "teacher_global_features needs the EMA vision teacher; the objective reading it must call "
            "backbones.require_vision_teacher() in __init__."
        )
    if is_token_model(teacher):
        return step.get("teacher_global_tokens")[:, 0]
    with batch_statistics(teacher, enabled=backbones.student_vision.training):
        return _per_view(teacher, step.view("global_crops"))
