"""SEED (Fang et al., ICLR 2021): self-supervised distillation by the teacher's similarity distribution
over a queue of teacher embeddings.

With s, t (B, D) the L2-normalised student and teacher embeddings and the queue D (K, D) of past
teacher embeddings (:class:`~hirl_like.losses.moco.MomentumQueue`), the instance set of row b is
the queue plus the teacher embedding of the sample itself, ``d_0 = t_b``::

    p_T[b, j] = softmax_j(<t_b, d_j> / tau_T)      p_S[b, j] = softmax_j(<s_b, d_j> / tau_S)    j = 0..K
    L = -1/B sum_b sum_j p_T[b, j] log p_S[b, j]

then the teacher embeddings of every rank are enqueued (oldest rows replaced). The teacher gets no
gradient (uni-directional). tau_S = 0.2, tau_T = 0.01 as the SEED paper; ITRA (the defaults of
SEED's ``builder.py``) uses tau_S = 0.07, tau_T = 1e-4; the paper's K = 65536 (ITRA: 128,000).

Returns ``{"loss", "positive_prob"}``: the mean student probability of index 0 (the sample's own
teacher embedding), detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.losses.distillers._common import check_pair, check_positive, float32
from hirl_like.losses.moco import MomentumQueue
from hirl_like.registry import LOSSES


@LOSSES.register()
class SEEDLoss(nn.Module):
    """Args: dim (D), queue_size (K, 65536), student_temp (tau_S, 0.2), teacher_temp (tau_T, 0.01)."""

    def __init__(self, dim: int = 512, queue_size: int = 65536, student_temp: float = 0.2, teacher_temp: float = 0.01) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("queue_size", queue_size), ("student_temp", student_temp), ("teacher_temp", teacher_temp)):
            check_positive("SEEDLoss", name, value)
        self.student_temp, self.teacher_temp = float(student_temp), float(teacher_temp)
        self.queue = MomentumQueue(int(dim), int(queue_size))

    def forward(self, student: Tensor, teacher: Tensor) -> dict[str, Tensor]:
        """student: (B, D); teacher: (B, D), detached here."""
        check_pair(student, teacher, "SEEDLoss")
        if student.shape[1] != self.queue.dim:
            raise ValueError(f"SEEDLoss: embeddings of size {student.shape[1]} for a queue of size {self.queue.dim}.")
        with float32(student):
            s = F.normalize(student.float(), dim=1)
            t = F.normalize(teacher.detach().float(), dim=1)
            bank = self.queue.queue.detach().float().clone()
            logits_s = torch.cat([(s * t).sum(dim=1, keepdim=True), s @ bank.T], dim=1) / self.student_temp
            logits_t = torch.cat([(t * t).sum(dim=1, keepdim=True), t @ bank.T], dim=1) / self.teacher_temp
            log_p_s = F.log_softmax(logits_s, dim=1)
            loss = -(F.softmax(logits_t, dim=1) * log_p_s).sum(dim=1).mean()
        self.queue.enqueue(t)
        return {"loss": loss, "positive_prob": log_p_s[:, 0].exp().mean().detach()}
