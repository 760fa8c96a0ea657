"""Base of the image-text distiller objectives (ITRA, ChenDelong1999/ITRA ``src/distiller``).

A distiller reads the two shared joint-space embeddings of a step, ``student_image_embedding`` and
``student_text_embedding`` ((B, E) each, L2-normalised; the same forwards CLIP reads, so a
``[clip, vl_...]`` pipeline encodes each tower once), and makes one of them the *teacher*:
``teacher: text`` (ITRA's default) trains the image side towards the text side.

- Uni-directional distillers (``uni_directional = True``: CompRess-1q, SEED, DINO, ProtoCPC, as
  ITRA's ``UNI_DIRECTIONAL``) always detach the teacher embedding: no gradient of the objective
  reaches the teacher tower. With such a distiller alone, the teacher tower does not train (ITRA
  starts it from a pretrained model); under DDP set ``find_unused_parameters: true``.
- The others pass gradients to both towers; ``detach_teacher: true`` freezes the teacher side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from hirl_like.models.heads import ProjectionMLP
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objective import Objective
from hirl_like.pipelines.objectives._checks import check_dims, check_hidden_dims
from hirl_like.pipelines.step_cache import StepCache

TEACHERS = ("text", "image")


class DistillerObjective(Objective):
    """Args (for subclasses):
    key: the objective's registry name, for messages (``pipeline.<key>.<argument>``).
    teacher: ``text`` or ``image``: which tower's embedding is the target.
    detach_teacher: stop the gradient into the teacher side (forced on when ``uni_directional``).
    """

    uni_directional: ClassVar[bool] = False

    def __init__(self, backbones: Backbones, key: str, teacher: str = "text", detach_teacher: bool = False) -> None:
        super().__init__(backbones)
        if teacher not in TEACHERS:
            raise ValueError(f"pipeline.{key}.teacher must be one of {', '.join(TEACHERS)}, got {teacher!r}.")
        backbones.require_text()
        self.key = key
        self.teacher = teacher
        self.detach_teacher = bool(detach_teacher) or self.uni_directional
        self.embed_dim = int(backbones.embed_dim)

    def requires(self) -> tuple[str, ...]:
        return ("student_image_embedding", "student_text_embedding")

    def student_teacher(self, step: StepCache) -> tuple[torch.Tensor, torch.Tensor]:
        """(student, teacher) embeddings, (B, E) each; the teacher detached when it must be."""
        image, text = step.get("student_image_embedding"), step.get("student_text_embedding")
        student, teacher = (image, text) if self.teacher == "text" else (text, image)
        return student, (teacher.detach() if self.detach_teacher else teacher)

    def make_projectors(self, hidden_dims: Sequence[int], dim: int | None) -> tuple[nn.Module, nn.Module]:
        """(student projector, teacher projector): one MLP per side (the modalities differ), E ->
        ``hidden_dims`` (BatchNorm + ReLU) -> ``dim``, as the expanders of VICReg and Barlow Twins;
        identities when ``dim`` is None (ITRA's default: no head)."""
        if dim is None:
            if hidden_dims:
                raise ValueError(f"pipeline.{self.key}.projector_hidden_dims needs projector_dim (the output size).")
            return nn.Identity(), nn.Identity()
        check_dims(self.key, projector_dim=dim)
        hidden = check_hidden_dims(self.key, "projector_hidden_dims", hidden_dims)
        return (ProjectionMLP(self.embed_dim, hidden, dim, norm="bn"), ProjectionMLP(self.embed_dim, hidden, dim, norm="bn"))
