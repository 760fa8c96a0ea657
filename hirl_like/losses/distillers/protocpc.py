"""ProtoCPC (Lee, ICLR 2022): prototypical contrastive predictive coding, as ITRA's ``distiller/ProtoCPC.py``.

With s, t (B, K) the student's and the teacher's scores over K prototypes, the teacher's assignment
``q = softmax(t / T_t)`` (no centring) and the prototype prior pi (1, K), the loss is the
prior-weighted contrastive bound of the paper::

    L = 1/B sum_b [ -sum_k q_bk s_bk / T_s + log sum_k pi_k exp(s_bk / T_s) ]

With pi = 1 (its start) this is the cross-entropy ``-sum_k q_bk log softmax(s_b / T_s)_k``. The
prior follows the batch's assignments of every rank, normalised to sum to K::

    pi <- m pi + (1 - m) K * sum_b q_b / sum_{b,k} q_bk

updated *before* the loss of the step, as the reference does. T_s = 0.1, T_t = 0.04, m = 0.9
(ITRA). The teacher gets no gradient (uni-directional). ITRA's optional Sinkhorn assignment
(``pla='sk'``, not its default) is not ported.

Returns ``{"loss", "target_entropy", "target_entropy_ratio", "batch_target_entropy"}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.distributed import all_reduce_sum
from hirl_like.evaluation.collapse import target_entropy_terms
from hirl_like.losses.distillers._common import check_momentum, check_pair, check_positive, float32
from hirl_like.registry import LOSSES


@LOSSES.register()
class ProtoCPCLoss(nn.Module):
    """Args: out_dim (K, 65536), student_temp (T_s, 0.1), prior_momentum (m, 0.9)."""

    def __init__(self, out_dim: int = 65536, student_temp: float = 0.1, prior_momentum: float = 0.9) -> None:
        super().__init__()
        check_positive("ProtoCPCLoss", "out_dim", out_dim)
        check_positive("ProtoCPCLoss", "student_temp", student_temp)
        check_momentum("ProtoCPCLoss", "prior_momentum", prior_momentum)
        self.out_dim, self.student_temp, self.prior_momentum = int(out_dim), float(student_temp), float(prior_momentum)
        self.register_buffer("prior", torch.ones(1, self.out_dim))

    @torch.no_grad()
    def _update_prior(self, q: Tensor) -> None:
        batch = all_reduce_sum(q.sum(dim=0, keepdim=True))
        batch = batch / batch.sum() * self.out_dim
        self.prior.mul_(self.prior_momentum).add_(batch, alpha=1.0 - self.prior_momentum)

    def forward(self, student_scores: Tensor, teacher_scores: Tensor, teacher_temp: float) -> dict[str, Tensor]:
        """student_scores: (B, K); teacher_scores: (B, K) raw (detached here); teacher_temp: T_t > 0."""
        check_pair(student_scores, teacher_scores, "ProtoCPCLoss")
        if student_scores.shape[1] != self.out_dim:
            raise ValueError(f"ProtoCPCLoss: scores over {student_scores.shape[1]} prototypes, out_dim={self.out_dim}.")
        check_positive("ProtoCPCLoss", "teacher_temp", teacher_temp)
        q = F.softmax(teacher_scores.detach().float() / teacher_temp, dim=1)
        self._update_prior(q)
        with float32(student_scores):
            s = student_scores.float() / self.student_temp
            loss = (-(q * s).sum(dim=1) + torch.logsumexp(s + self.prior.log(), dim=1)).mean()
        return {"loss": loss, **target_entropy_terms(q)}
