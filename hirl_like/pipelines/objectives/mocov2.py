"""MoCo v2 objective (Chen, Fan, Girshick & He 2020): InfoNCE of a query against its momentum key
and a queue of past keys."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hirl_like.losses.moco import MoCoV2Loss, moco_infonce
from hirl_like.models.heads import ProjectionMLP
from hirl_like.pipelines.backbones import Backbones, make_teacher
from hirl_like.pipelines.objective import Objective
from hirl_like.pipelines.objectives._checks import check_dims, check_hidden_dims, check_positive
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES


@OBJECTIVES.register("mocov2")
class MoCoV2Objective(Objective):
    """Query encoder: the student backbone's pooled feature (``student_global_features``: ResNet
    pool or ViT [CLS]) of global crop 0 through a projection MLP ``g`` (MoCo v2: D -> D -> 128,
    ReLU, no BatchNorm). Key encoder: the EMA teacher backbone (``teacher_global_features``, with
    BatchNorm batch statistics as MoCo's key encoder in train mode) and an EMA copy of ``g``, on
    global crop 1; both momentum-updated by the pipeline (``ema_momentum``, MoCo v2: 0.999 fixed,
    i.e. ``ema_momentum: 0.999, ema_momentum_end: 0.999``).

    With q = normalize(g(f(x_0))), k = normalize(g_ema(f_ema(x_1))) (B, dim) and the queue Q
    (K, dim) of earlier keys (:class:`~hirl_like.losses.moco.MomentumQueue`)::

        L(q, k) = -1/B sum_b log( exp(q_b.k_b / T) / (exp(q_b.k_b / T) + sum_j exp(q_b.Q_j / T)) )

    (:func:`~hirl_like.losses.moco.moco_infonce`); no gradient reaches k or Q. After the loss the
    keys are enqueued (gathered over ranks), replacing the oldest.

    ``symmetric``: ``(L(q_0, k_1) + L(q_1, k_0)) / 2`` and both key sets are enqueued (the moco
    repository's CIFAR demo; it sums the two terms, the average keeps the loss on the scale of
    the asymmetric one). Both terms see the queue as it was before this step.

    Local crops (multi-crop MoCo as in HIRL's ``moco_resnet50_multi_crop``): when the batch has
    ``local_crops`` and ``use_local_crops`` is on, each local crop l is an extra query against the
    key of global crop 1 and the same queue: ``loss += sum_l L(q_l, k_1)`` (a sum, as HIRL); local
    keys are never enqueued. MoCo v2's own recipe has no local crops (``local_crops: 0``).

    The exported backbone is the student (the query encoder, as MoCo's linear evaluation reads
    ``encoder_q``): :meth:`Backbones.prefer_student_export`.

    Args:
        dim: projection and key size (128).
        projector_hidden_dims: hidden widths of ``g`` (None: one layer of width D, MoCo v2's MLP).
        queue_size: K, keys kept (65536); must hold a step's keys of all ranks (2B x world when
            symmetric).
        temperature: T (0.2; MoCo v1: 0.07).
        symmetric: both directions, averaged (default off, as MoCo v2).
        use_local_crops: local crops, when the batch has them, are extra queries (default on).

    Returns ``{"loss", "acc"}``: ``acc`` is the percent of queries of crop 0 whose positive is the
    top logit, detached.
    """

    views = ("global_crops", "local_crops")

    def __init__(
        self,
        backbones: Backbones,
        dim: int = 128,
        projector_hidden_dims: Sequence[int] | None = None,
        queue_size: int = 65536,
        temperature: float = 0.2,
        symmetric: bool = False,
        use_local_crops: bool = True,
    ) -> None:
        super().__init__(backbones)
        check_dims("mocov2", dim=dim, queue_size=queue_size)
        check_positive("mocov2", "temperature", temperature)
        width = backbones.student_vision.embed_dim
        hidden = (width,) if projector_hidden_dims is None else check_hidden_dims("mocov2", "projector_hidden_dims", projector_hidden_dims)
        self.symmetric = bool(symmetric)
        self.use_local_crops = bool(use_local_crops)
        backbones.require_vision_teacher()
        backbones.prefer_student_export()
        self.head = ProjectionMLP(width, hidden, dim, norm=None)
        self.teacher_head = make_teacher(self.head)
        self.loss = MoCoV2Loss(temperature=temperature, dim=dim, queue_size=queue_size)

    def requires(self) -> tuple[str, ...]:
        needs = ("student_global_features", "teacher_global_features")
        return needs + (("student_local_features",) if self.use_local_crops else ())

    def ema_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [(self.head, self.teacher_head)]

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        crops = step.view("global_crops")
        if len(crops) < 2:
            raise ValueError(f"mocov2 needs 2 global crops (query and key), the batch has {len(crops)}.")
        b = crops[0].shape[0]
        local = step.view("local_crops", default=[]) if self.use_local_crops else []
        feats = step.get("student_global_features")[: 2 * b if self.symmetric else b]
        if local:
            feats = torch.cat([feats, step.get("student_local_features")])
        queries = self.head(feats)  # (Q*B, dim): crop 0 [, crop 1], then the local crops
        with torch.no_grad():
            keys = self.teacher_head(step.get("teacher_global_features")[: 2 * b])  # (2B, dim): k_0, k_1
        temperature = self.loss.temperature
        with torch.autocast(device_type=queries.device.type, enabled=False):
            q = F.normalize(queries.float(), dim=1)
            k = F.normalize(keys.float(), dim=1)
            k0, k1 = k[:b], k[b:]
            negatives = self.loss.queue.queue.detach().float().clone()  # the queue before this step
            loss, logits = moco_infonce(q[:b], k1, negatives, temperature)
            if self.symmetric:
                loss = (loss + moco_infonce(q[b : 2 * b], k0, negatives, temperature)[0]) / 2
            start = 2 * b if self.symmetric else b
            for v in range(len(local)):
                rows = q[start + v * b : start + (v + 1) * b]
                loss = loss + moco_infonce(rows, k1, negatives, temperature)[0]
        with torch.no_grad():
            acc = (logits.argmax(dim=1) == 0).float().mean() * 100.0
        self.loss.queue.enqueue(torch.cat([k0, k1]) if self.symmetric else k1)
        return {"loss": loss, "acc": acc}
