"""DINO objective (Caron et al. 2021): the [CLS] cross-view term of iBOT on its own."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hirl_like.losses.distill_ce import (
    check_momentum,
    check_positive,
    check_views,
    cross_view_ce,
    ema_update_center_,
    teacher_probs,
)
from hirl_like.evaluation.collapse import target_entropy_terms
from hirl_like.registry import LOSSES


@LOSSES.register()
class DINOLoss(nn.Module):
    """Centred, sharpened cross-entropy between teacher global views and every other student view.

    ``loss = sum_{q < G} sum_{v != q} mean_b H(softmax((t_q - c)/T_t), log_softmax(s_v/T_s)) / (G*(G+L) - G)``

    Then ``c <- m c + (1 - m) mean(t)`` (raw teacher rows, averaged over all ranks). The centre used in
    the loss is the one from before this step, as in DINO.

    Args:
        out_dim: K, the head's output size (65536 in DINO).
        global_crops: G, views seen by both teacher and student (the student's first G views).
        local_crops: L, extra student-only views.
        student_temp: T_s (0.1).
        center_momentum: m (0.9).
    """

    def __init__(
        self,
        out_dim: int = 65536,
        global_crops: int = 2,
        local_crops: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        check_positive("out_dim", out_dim)
        check_positive("global_crops", global_crops)
        if local_crops < 0:
            raise ValueError(f"local_crops must be >= 0, got {local_crops}.")
        if global_crops + local_crops < 2:
            raise ValueError("DINO compares different views: set global_crops + local_crops >= 2.")
        check_positive("student_temp", student_temp)
        check_momentum("center_momentum", center_momentum)
        self.out_dim = out_dim
        self.global_crops = global_crops
        self.local_crops = local_crops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_cls: Tensor, teacher_cls: Tensor, teacher_temp: float) -> dict[str, Tensor]:
        """student_cls: ((G+L)*B, K) view-major; teacher_cls: (G*B, K) raw, no grad.

        Returns {"loss", "target_entropy", "target_entropy_ratio", "batch_target_entropy"}: the
        last three (no grad) are the mean entropy of the centred, sharpened targets (nats), that
        over ln K (-> 1: uniform collapse), and the entropy of their batch mean (-> 0: every
        sample on one prototype); see :func:`~hirl_like.evaluation.collapse.target_entropy`.
        """
        g, n_views = self.global_crops, self.global_crops + self.local_crops
        check_views(student_cls, teacher_cls, g, n_views, self.out_dim)
        loss = cross_view_ce(student_cls, teacher_cls, self.center, g, self.student_temp, teacher_temp)
        # collapse indicators of the targets, with the centre the loss used (hirl_like.evaluation.collapse)
        diagnostics = target_entropy_terms(teacher_probs(teacher_cls, self.center, teacher_temp))
        ema_update_center_(self.center, teacher_cls, self.center_momentum)
        return {"loss": loss, **diagnostics}

