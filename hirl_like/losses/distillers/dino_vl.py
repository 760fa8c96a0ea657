"""DINO across modalities (Caron et al., ICCV 2021, as ITRA's ``distiller/DINO.py``): the image
head's prototype scores learn the text side's centred, sharpened distribution over the same prototypes.

With s, t (B, K) the student's and the teacher's scores over the K prototypes (one view each: the
image and its caption), the centre c (1, K) and the temperatures T_s, T_t::

    L = -1/B sum_b sum_k softmax((t_b - c) / T_t)_k  log_softmax(s_b / T_s)_k
    c <- m c + (1 - m) mean_b t_b                    (raw teacher scores of every rank, after the loss)

T_s = 0.1, T_t = 0.04 (DINO's warm-up goes 0.04 -> 0.07; ITRA keeps 0.04), m = 0.9. The teacher
gets no gradient (uni-directional). Unlike DINO's multi-crop loss there is one pair per sample.

Returns ``{"loss", "target_entropy", "target_entropy_ratio", "batch_target_entropy"}`` (collapse
indicators of the targets, :func:`~hirl_like.evaluation.collapse.target_entropy_terms`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hirl_like.evaluation.collapse import target_entropy_terms
from hirl_like.losses.distill_ce import centered_sharpened_ce, ema_update_center_, teacher_probs
from hirl_like.losses.distillers._common import check_momentum, check_pair, check_positive, float32
from hirl_like.registry import LOSSES


@LOSSES.register()
class CrossModalDINOLoss(nn.Module):
    """Args: out_dim (K, 65536), student_temp (T_s, 0.1), center_momentum (m, 0.9)."""

    def __init__(self, out_dim: int = 65536, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        check_positive("CrossModalDINOLoss", "out_dim", out_dim)
        check_positive("CrossModalDINOLoss", "student_temp", student_temp)
        check_momentum("CrossModalDINOLoss", "center_momentum", center_momentum)
        self.out_dim, self.student_temp, self.center_momentum = int(out_dim), float(student_temp), float(center_momentum)
        self.register_buffer("center", torch.zeros(1, self.out_dim))

    def forward(self, student_scores: Tensor, teacher_scores: Tensor, teacher_temp: float) -> dict[str, Tensor]:
        """student_scores: (B, K); teacher_scores: (B, K) raw (detached here); teacher_temp: T_t > 0."""
        check_pair(student_scores, teacher_scores, "CrossModalDINOLoss")
        if student_scores.shape[1] != self.out_dim:
            raise ValueError(f"CrossModalDINOLoss: scores over {student_scores.shape[1]} prototypes, out_dim={self.out_dim}.")
        check_positive("CrossModalDINOLoss", "teacher_temp", teacher_temp)
        teacher = teacher_scores.detach().float()
        with float32(student_scores):
            loss = centered_sharpened_ce(student_scores, teacher, self.center, self.student_temp, teacher_temp).mean()
        diagnostics = target_entropy_terms(teacher_probs(teacher, self.center, teacher_temp))
        ema_update_center_(self.center, teacher, self.center_momentum)
        return {"loss": loss, **diagnostics}
