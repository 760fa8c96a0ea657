"""Students and EMA teachers shared by every objective of a pipeline.

One student and one EMA teacher per modality: the student ViT is shared by the CLIP, iBOT and
MAE paths; the text student by CLIP, MLM and text distillation. Objectives ask for what they
need (``require_*``) while they are built; :meth:`finalize` then creates the teachers as copies
of the students (no drop path, no gradient), so a run builds only what its objectives use.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from timm.layers import DropPath

from hirl_like.models.builders.projection import build_projection_head
from hirl_like.registry import MODELS


class Backbones(nn.Module):
    """Args:
    vision: MODELS config node of the student ViT (e.g. ``{name: vit, arch: vit_small, ...}``).
    text: MODELS config node of the text student, or None for image-only methods.
    embed_dim: joint image-text space size (CLIP projections).
    """

    def __init__(self, vision: dict[str, Any], text: dict[str, Any] | None = None, embed_dim: int = 512) -> None:
        super().__init__()
        self.vision_cfg = dict(vision)
        self.text_cfg = dict(text) if text is not None else None
        self.embed_dim = embed_dim
        self.student_vision = MODELS.build(self.vision_cfg)
        self.student_text: nn.Module | None = None
        self.image_projection: nn.Module | None = None  # W -> E: a bias-free Linear, or the vision node's head
        self.teacher_vision: nn.Module | None = None
        self.teacher_text: nn.Module | None = None
        self.teacher_image_projection: nn.Module | None = None
        self._want_vision_teacher = False
        self._want_text_teacher = False
        self._export_student = False
        self._finalized = False

    # -- requests made by objectives while they are built --------------------------------------
    def require_text(self) -> None:
        if self.student_text is not None:
            return
        if self.text_cfg is None:
            raise ValueError(
                "an objective needs a text encoder but the pipeline has no 'text' node; "
                "add pipeline.text (e.g. {name: text_transformer, width: 512, layers: 12}) "
                "or drop the text objectives (clip, mlm, text_distill)."
            )
        self.student_text = MODELS.build(self.text_cfg, embed_dim=self.embed_dim)
        width = self.student_vision.embed_dim
        head = getattr(self.student_vision, "projection_head", None)  # builder towers' ``head`` node
        if head is not None:
            self.image_projection = build_projection_head(head, width, self.embed_dim, "pipeline.vision.head")
            return
        self.image_projection = nn.Linear(width, self.embed_dim, bias=False)
        nn.init.normal_(self.image_projection.weight, std=width**-0.5)

    def require_vision_teacher(self) -> None:
        self._check_open()
        self._want_vision_teacher = True

    def require_text_teacher(self) -> None:
        self._check_open()
        self.require_text()
        self._want_text_teacher = True

    def prefer_student_export(self) -> None:
        """Export the students rather than the EMA teachers (:meth:`exported_vision`,
        :meth:`exported_text`).

        MoCo v2/v3 evaluate the *query* encoder, the one trained by gradient (MoCo's
        ``main_lincls.py`` loads ``encoder_q`` / ``base_encoder``); their momentum encoder only makes
        keys. DINO/iBOT evaluate the EMA teacher instead. An objective that needs the student
        exported calls this in ``__init__``; the request holds for the whole pipeline (with
        ``mocov2`` and ``dino`` in one run the student is exported) and is made again whenever the
        pipeline is rebuilt from its config, so checkpoints need not record it.
        """
        self._check_open()
        self._export_student = True

    @property
    def exports_student(self) -> bool:
        """True when the exports are the students though a teacher exists (:meth:`prefer_student_export`)."""
        return self._export_student

    def require_mask_token(self) -> None:
        self._check_open()
        vit = self.student_vision
        if getattr(vit, "mask_token", None) is None:
            vit.mask_token = nn.Parameter(torch.zeros(1, 1, vit.embed_dim))
            nn.init.normal_(vit.mask_token, std=0.02)

    def _check_open(self) -> None:
        if self._finalized:
            raise RuntimeError("Backbones are finalized; objectives must make their requests in __init__.")

    def finalize(self) -> None:
        """Create the EMA teachers as gradient-free copies of the students.

        With both towers, a teacher of one means a teacher of the other: the exports pair the
        EMA vision teacher with the text encoder for zero-shot and retrieval, and an EMA ViT beside
        a student text tower (CLIP + iBOT with hard targets) or a student ViT beside an EMA text
        tower (CLIP + text distillation) would be a pair that never trained together. The extra
        teacher only follows the EMA; no objective reads it.
        """
        if self.student_text is not None and self.image_projection is not None:
            if self._want_vision_teacher or self._want_text_teacher:
                self._want_vision_teacher = self._want_text_teacher = True
        if self._want_vision_teacher:
            self.teacher_vision = make_teacher(self.student_vision)
            if self.image_projection is not None:
                self.teacher_image_projection = make_teacher(self.image_projection)
        if self._want_text_teacher:
            self.teacher_text = make_teacher(self.student_text)  # type: ignore[arg-type]
            if self.teacher_image_projection is None and self.image_projection is not None:
                self.teacher_image_projection = make_teacher(self.image_projection)
        self._finalized = True

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = []
        for student, teacher in (
            (self.student_vision, self.teacher_vision),
            (self.image_projection, self.teacher_image_projection),
            (self.student_text, self.teacher_text),
        ):
            if student is not None and teacher is not None:
                pairs.append((student, teacher))
        return pairs

    # -- export ------------------------------------------------------------------------------
    def exported_vision(self) -> nn.Module:
        """The backbone evaluations should use: the EMA teacher when there is one (as iBOT/DINO),
        unless an objective asked for the student (:meth:`prefer_student_export`: MoCo v2/v3)."""
        if self._export_student or self.teacher_vision is None:
            return self.student_vision
        return self.teacher_vision

    def exported_text(self) -> tuple[nn.Module | None, nn.Module | None]:
        """(text encoder, image projection) for zero-shot: the projection always pairs with the
        exported vision backbone (teacher with teacher), the text encoder is the EMA teacher when
        there is one; all students after :meth:`prefer_student_export`."""
        if self._export_student:
            return self.student_text, self.image_projection
        text = self.teacher_text if self.teacher_text is not None else self.student_text
        projection = self.teacher_image_projection if self.teacher_vision is not None else self.image_projection
        return text, projection

    def drop_teachers(self) -> None:
        """Remove the EMA teachers, so that the exports are the students (evaluation of a rebuilt
        pipeline only: training cannot go on without them). After :meth:`prefer_student_export`
        the exports are the students already; this changes nothing they return."""
        self.teacher_vision = self.teacher_text = self.teacher_image_projection = None

    def train(self, mode: bool = True) -> "Backbones":
        super().train(mode)
        for teacher in (self.teacher_vision, self.teacher_text, self.teacher_image_projection):
            if teacher is not None:
                teacher.eval()  # teachers never train (no dropout / BN updates)
        return self


def make_teacher(student: nn.Module) -> nn.Module:
    """Deep copy without drop path and without gradients (iBOT/DINO teachers)."""
    teacher = copy.deepcopy(student)
    for module in teacher.modules():
        if isinstance(module, DropPath):
            module.drop_prob = 0.0
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


@contextmanager
def batch_statistics(module: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, every BatchNorm of ``module`` normalises with the statistics of the batch
    it sees, and no running statistic (mean, variance, ``num_batches_tracked``) changes.

    Why: the pipeline keeps EMA teachers in eval mode (no dropout, no drop path, frozen buffers),
    but the momentum encoders of MoCo v2/v3 (and DINO's with a ResNet) run in *train* mode in the
    reference code, so their BatchNorms use batch statistics. Evaluated with running statistics, a
    CNN teacher's keys early in training would come from nearly untrained averages (the running
    statistics are the student's, copied by :func:`ema_update`), unlike the reference. The
    teacher's running statistics stay those :func:`ema_update` copies from its student.

    How: each ``_BatchNorm`` is set to ``training=True`` with ``track_running_stats=False`` (torch
    then passes no running buffers to ``F.batch_norm``: batch statistics, nothing updated, not even
    ``num_batches_tracked``), and both flags are restored on exit, also after an exception.
    Everything else in ``module`` (dropout, drop path) keeps its mode. ``enabled=False`` is a no-op
    (teachers follow their student's mode: batch statistics while the pipeline trains).
    """
    saved = []
    if enabled:
        for m in module.modules():
            if isinstance(m, _BatchNorm):
                saved.append((m, m.training, m.track_running_stats))
                m.training, m.track_running_stats = True, False
    try:
        yield module
    finally:
        for m, training, tracked in saved:
            m.training, m.track_running_stats = training, tracked


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in module.modules())


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dim in float32 (safe under fp16/bf16 autocast)."""
    return F.normalize(x.float(), dim=-1)


@torch.no_grad()
def ema_update(pairs: list[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student for every floating parameter; buffers are copied."""
    teacher_params: list[torch.Tensor] = []
    student_params: list[torch.Tensor] = []
    for student, teacher in pairs:
        s_params = dict(student.named_parameters())
        for name, t_param in teacher.named_parameters():
            teacher_params.append(t_param.data)
            student_params.append(s_params[name].data.to(t_param.dtype))
        s_buffers = dict(student.named_buffers())
        for name, t_buf in teacher.named_buffers():
            if name in s_buffers:
                t_buf.copy_(s_buffers[name])
    if teacher_params:
        torch._foreach_lerp_(teacher_params, student_params, 1.0 - momentum)
