"""SwAV objective (Caron et al. 2020): swapped prediction of Sinkhorn-Knopp cluster codes over multi-crop."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hirl_like.losses.swav import SwAVLoss, normalize_prototypes_
from hirl_like.models.heads import ProjectionMLP
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objective import Objective
from hirl_like.pipelines.objectives._checks import check_dims, check_hidden_dims, check_positive
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES
from hirl_like.schedules import Progress, Span, check_span


@OBJECTIVES.register("swav")
class SwAVObjective(Objective):
    """All crops (the G global crops, then the local crops when the batch has them and
    ``use_local_crops`` is on; V crops in all) through the student backbone
    (``student_global_features`` / ``student_local_features``), one projection head over all V*B
    rows (SwAV: D -> 2048 -> 128, BatchNorm + ReLU on the hidden layer), L2-normalised to z
    (V*B, 128), scored against the K prototypes C (``nn.Linear(128, K, bias=False)``, rows
    L2-normalised in place before every forward, under no_grad, as ``main_swav.py``): S = z C^T
    (V*B, K). No teacher. With crops_for_assign = the global crops 0 and 1 (SwAV's default)::

        q_c = Sinkhorn(S_c)  (codes, no grad: exp(S_c / eps), 3 row/column normalisations)
        p_v = softmax(S_v / T)
        L = 1/2 sum_{c in {0, 1}} 1/(V-1) sum_{v != c} -1/B sum_b sum_k q_c[b, k] log p_v[b, k]

    (:class:`~hirl_like.losses.swav.SwAVLoss`, :func:`~hirl_like.losses.swav.sinkhorn_knopp`).

    Prototypes are frozen (their gradient dropped before the optimizer step, so they get neither
    an update nor weight decay) over the first ``freeze_prototypes`` (SwAV:
    ``--freeze_prototypes_niters 313``, one ImageNet epoch at batch 4096).

    Queue (``queue_length`` > 0, SwAV's small-batch option): from ``epoch_queue_starts`` on, the
    embeddings of crops 0 and 1 of every step are kept (the L newest, all ranks), and once the
    queue is full the codes are computed on the queue's rows followed by the batch (only the
    batch's codes are used). L must be a multiple of world_size * B (SwAV trims it to one).

    Args:
        dim: embedding size (128).
        projector_hidden_dims: hidden widths of the projection head ([2048]).
        nmb_prototypes: K (3000).
        temperature: T of the predictions (0.1).
        epsilon: Sinkhorn regularisation (0.05).
        sinkhorn_iterations: 3.
        freeze_prototypes: epochs or a share of the run (1 epoch).
        queue_length: L (0: no queue).
        epoch_queue_starts: epochs or a share of the run before the queue starts filling (15).
        use_local_crops: predict the codes from the local crops too (multi-crop, default on).

    Returns ``{"loss"}``, plus ``queue_in_use`` (1 once the queue takes part in the codes) with a queue.
    """

    views = ("global_crops", "local_crops")

    def __init__(
        self,
        backbones: Backbones,
        dim: int = 128,
        projector_hidden_dims: Sequence[int] = (2048,),
        nmb_prototypes: int = 3000,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes: Span = 1.0,
        queue_length: int = 0,
        epoch_queue_starts: Span = 15.0,
        use_local_crops: bool = True,
    ) -> None:
        super().__init__(backbones)
        check_dims("swav", dim=dim, nmb_prototypes=nmb_prototypes, sinkhorn_iterations=sinkhorn_iterations)
        check_positive("swav", "temperature", temperature)
        check_positive("swav", "epsilon", epsilon)
        hidden = check_hidden_dims("swav", "projector_hidden_dims", projector_hidden_dims)
        if isinstance(queue_length, bool) or not isinstance(queue_length, int) or queue_length < 0:
            raise ValueError(f"swav.queue_length must be an integer >= 0 (0 = no queue), got {queue_length!r}.")
        self.freeze_prototypes = check_span(freeze_prototypes, "swav.freeze_prototypes")
        self.epoch_queue_starts = check_span(epoch_queue_starts, "swav.epoch_queue_starts")
        self.use_local_crops = bool(use_local_crops)
        width = backbones.student_vision.embed_dim
        self.projector = ProjectionMLP(width, hidden, dim, norm="bn")
        self.prototypes = nn.Linear(dim, nmb_prototypes, bias=False)
        # The crop count is set from the batch in forward (it cannot drift from the transform).
        self.loss = SwAVLoss(
            num_crops=2, crops_for_assign=(0, 1), temperature=temperature, epsilon=epsilon,
            sinkhorn_iterations=sinkhorn_iterations, queue_length=queue_length, feat_dim=dim,
        )

    def requires(self) -> tuple[str, ...]:
        return ("student_global_features",) + (("student_local_features",) if self.use_local_crops else ())

    def queue_active(self, progress: Progress) -> bool:
        """Whether the queue is filled (and, once full, used) at this step."""
        return bool(self.loss.queue_length) and progress.iteration >= progress.iterations(self.epoch_queue_starts)

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        crops = step.view("global_crops")
        if len(crops) < 2:
            raise ValueError(f"swav computes codes for global crops 0 and 1: the batch has {len(crops)} global crop(s).")
        local = step.view("local_crops", default=[]) if self.use_local_crops else []
        feats = step.get("student_global_features")
        if local:
            feats = torch.cat([feats, step.get("student_local_features")])
        normalize_prototypes_(self.prototypes.weight)
        z = F.normalize(self.projector(feats), dim=1)  # (V*B, dim), crop-major
        scores = self.prototypes(z)  # (V*B, K)
        self.loss.num_crops = len(crops) + len(local)
        use_queue = self.queue_active(step.progress)
        # read before the loss call, which adds this step's rows to the queue
        in_use = use_queue and int(self.loss.queue_filled) >= self.loss.queue_length
        out = self.loss(scores, z, self.prototypes.weight, use_queue=use_queue)
        if self.loss.queue_length:
            out["queue_in_use"] = scores.new_tensor(float(in_use))
        return out

    def before_optimizer_step(self, progress: Progress) -> None:
        if progress.iteration < progress.iterations(self.freeze_prototypes):
            self.prototypes.weight.grad = None
