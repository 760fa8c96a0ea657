"""Shared forwards of the student ViT and its EMA teacher.

Global crops are stacked view-major: rows ``v*B:(v+1)*B`` of a (G*B, ...) tensor are crop v.

The student's forward on the iBOT-masked global crops also serves CLIP: iBOT leaves about half
the images unmasked (``pred_ratio [0, 0.3]``), and an unmasked row of crop 1 is exactly CLIP's
input, so CLIP's student image pass runs only on the rows iBOT masked. For that, iBOT provides
its masks in :meth:`Objective.prepare <hirl_like.pipelines.objective.Objective.prepare>`, before
any objective's forward, whatever the order of objectives in the config.

A backbone without a token forward (a ResNet, the builder towers of ``hirl_like.models.builders``:
open_clip, timm, torchvision) gives CLIP its pooled (B, W) feature of crop 1 in place of the [CLS]
token, for the student and for the EMA teacher (in eval mode); patch dropping needs a ViT.
"""

from __future__ import annotations

import torch

from hirl_like.data.masking import attentive_keep, random_masking
from hirl_like.pipelines.backbones import l2_normalize
from hirl_like.pipelines.forward_table import SHARED_FORWARDS
from hirl_like.pipelines.step_cache import StepCache


def gives_tokens(backbone: torch.nn.Module) -> bool:
    """True for a ViT with ``forward_tokens`` ([CLS] at index 0); False for a backbone that gives
    only a pooled (B, W) feature (a ResNet, the builder towers of ``hirl_like.models.builders``)."""
    return callable(getattr(backbone, "forward_tokens", None))


SHARED_FORWARDS.declare_provided(
    "student_global_masks",
    "(G*B, N) bool patch masks of the student's global crops, True = masked, view-major; "
    "provided by the masking objective (iBOT) in prepare()",
)


@SHARED_FORWARDS.register("student_masked_global_tokens", views=("global_crops",), uses=("student_global_masks",))
def student_masked_global_tokens(step: StepCache) -> torch.Tensor:
    """(G*B, 1+N, D) student tokens of the global crops, the learned mask token in the patches of
    ``student_global_masks``."""
    crops = torch.cat(step.view("global_crops"))
    return step.backbones.student_vision.forward_tokens(crops, mask=step.get("student_global_masks"))


@SHARED_FORWARDS.register("student_global_tokens", views=("global_crops",))
def student_global_tokens(step: StepCache) -> torch.Tensor:
    """(G*B, 1+N, D) student tokens of the unmasked global crops."""
    return step.backbones.student_vision.forward_tokens(torch.cat(step.view("global_crops")))


@SHARED_FORWARDS.register("student_local_tokens", views=("local_crops",))
def student_local_tokens(step: StepCache) -> torch.Tensor:
    """(L*B, 1+n, D) student tokens of the local crops (a pass of its own: another size, so the
    position embeddings are resampled)."""
    return step.backbones.student_vision.forward_tokens(torch.cat(step.view("local_crops")))


@SHARED_FORWARDS.register(
    "student_crop1_cls", views=("global_crops",), uses=("student_global_masks", "student_masked_global_tokens")
)
def student_crop1_cls(step: StepCache) -> torch.Tensor:
    """(B, D) student [CLS] of the unmasked global crop 1.

    When an objective provided masks this step, the rows its masked forward left unmasked are
    taken from that forward (the same input through the same network); only the others run again.
    """
    vit, crop1 = step.backbones.student_vision, step.view("global_crops")[0]
    if not gives_tokens(vit):  # a CNN or a builder tower (open_clip, timm, torchvision): its pooled feature
        return vit(crop1)
    masks = step.peek("student_global_masks")
    if masks is None:
        return vit.forward_tokens(crop1)[:, 0]
    b = crop1.shape[0]
    cls = step.get("student_masked_global_tokens")[:b, 0]
    masked_rows = masks[:b].any(dim=1).nonzero()[:, 0]  # rows of crop 1 with a masked patch
    if masked_rows.numel() == 0:
        return cls
    return cls.index_put((masked_rows,), vit.forward_tokens(crop1[masked_rows])[:, 0])


@SHARED_FORWARDS.register("student_image_embedding", uses=("student_crop1_cls",))
def student_image_embedding(step: StepCache) -> torch.Tensor:
    """(B, E) L2-normalised CLIP embedding of global crop 1 by the student."""
    return l2_normalize(step.backbones.image_projection(step.get("student_crop1_cls")))


@SHARED_FORWARDS.register("teacher_global_tokens", views=("global_crops",))
@torch.no_grad()
def teacher_global_tokens(step: StepCache) -> torch.Tensor:
    """(G*B, 1+N, D) EMA-teacher tokens of the unmasked global crops, no grad."""
    return step.backbones.teacher_vision.forward_tokens(torch.cat(step.view("global_crops")))


@SHARED_FORWARDS.register("teacher_image_embedding", views=("global_crops",), uses=("teacher_global_tokens",))
@torch.no_grad()
def teacher_image_embedding(step: StepCache) -> torch.Tensor:
    """(B, E) L2-normalised teacher CLIP embedding of global crop 1 (rows of teacher_global_tokens)."""
    crop1 = step.view("global_crops")[0]
    teacher = step.backbones.teacher_vision
    if teacher is not None and not gives_tokens(teacher):  # pooled-feature tower, in eval mode (running BN statistics)
        return l2_normalize(step.backbones.teacher_image_projection(teacher(crop1)))
    cls = step.get("teacher_global_tokens")[: crop1.shape[0], 0]
    return l2_normalize(step.backbones.teacher_image_projection(cls))


# -- the image given to CLIP with patches dropped (Harmony Appendix D) ---------------------------
IMAGE_MASKS = ("none", "random", "attentive")


@SHARED_FORWARDS.register("teacher_crop1_cls_attention", views=("global_crops",))
@torch.no_grad()
def teacher_crop1_cls_attention(step: StepCache) -> torch.Tensor:
    """(B, N) the EMA teacher's last-block [CLS] attention to each patch of global crop 1."""
    return step.backbones.teacher_vision.cls_attention(step.view("global_crops")[0])


@SHARED_FORWARDS.register("clip_image_keep_ids", views=("global_crops",), uses=("teacher_crop1_cls_attention",))
def clip_image_keep_ids(step: StepCache, mode: str, ratio: float) -> torch.Tensor:
    """(B, K) long: the patches of global crop 1 CLIP's student keeps when a share ``ratio`` is
    dropped; ``random`` per image from the step's generator, ``attentive`` the K patches the
    teacher's [CLS] attends to most."""
    crop1 = step.view("global_crops")[0]
    if mode == "attentive":
        return attentive_keep(step.get("teacher_crop1_cls_attention"), ratio)
    if mode == "random":
        ids_keep, _, _ = random_masking(crop1.shape[0], step.backbones.student_vision.num_patches, ratio, step.generator)
        return ids_keep.to(crop1.device)
    raise ValueError(f"clip.image_mask must be one of {', '.join(IMAGE_MASKS)}, got {mode!r}.")


@SHARED_FORWARDS.register("student_masked_image_embedding", views=("global_crops",), uses=("clip_image_keep_ids",))
def student_masked_image_embedding(step: StepCache, mode: str, ratio: float) -> torch.Tensor:
    """(B, E) L2-normalised student CLIP embedding of global crop 1 with only the kept patches
    through the encoder (FLIP-style token drop: the saving of masking the CLIP image)."""
    crop1 = step.view("global_crops")[0]
    if not gives_tokens(step.backbones.student_vision):
        raise ValueError(f"clip.image_mask={mode!r} drops ViT patches; the {type(step.backbones.student_vision).__name__} "
                         "tower has no patch tokens: use image_mask: none or the vit model.")
    ids_keep = step.get("clip_image_keep_ids", mode=mode, ratio=ratio)
    cls = step.backbones.student_vision.forward_tokens(crop1, ids_keep=ids_keep)[:, 0]
    return l2_normalize(step.backbones.image_projection(cls))
