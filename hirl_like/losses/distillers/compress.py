"""CompRess (Koohpayegani, Tejankar & Pirsiavash, NeurIPS 2020): match similarity distributions over
a memory bank of anchors.

With s, t (B, D) the L2-normalised student and teacher embeddings and memory banks (queues of past
embeddings, :class:`~hirl_like.losses.moco.MomentumQueue`) Q_s, Q_t (K, D)::

    p_t = softmax(t Q_t^T / T)        p_s = softmax(s Q_s^T / T)        (B, K)
    L   = 1/B sum_b KL(p_t[b] || p_s[b]) = 1/B sum_b sum_k p_t[b,k] (log p_t[b,k] - log p_s[b,k])

``CompRessLoss`` ("CompRess-2q"): each side has its own bank, the teacher's filled with teacher
embeddings and the student's with student embeddings. ``CompRess1qLoss`` ("CompRess-1q"): the
student's similarities are taken to the *teacher's* bank too (Q_s = Q_t), and the teacher gets no
gradient (ITRA lists it as uni-directional). Both banks are read as they were before this step,
then this step's embeddings (of every rank) replace the oldest rows. T = 0.04, K = 128,000
(the paper and ITRA).

Returns ``{"loss", "teacher_entropy"}``: the mean entropy of p_t in nats (ln K when uniform), detached.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.losses.distillers._common import check_pair, check_positive, float32
from hirl_like.losses.moco import MomentumQueue
from hirl_like.registry import LOSSES


def kl_over_bank(student: Tensor, teacher: Tensor, student_bank: Tensor, teacher_bank: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(mean_b KL(p_t || p_s), mean entropy of p_t) for unit rows and (K, D) banks, float32."""
    log_p_s = F.log_softmax(student @ student_bank.T / temperature, dim=1)
    log_p_t = F.log_softmax(teacher @ teacher_bank.T / temperature, dim=1)
    p_t = log_p_t.exp()
    kl = (p_t * (log_p_t - log_p_s)).sum(dim=1).mean()
    return kl, -(p_t * log_p_t).sum(dim=1).mean().detach()


class _CompRessBase(nn.Module):
    def __init__(self, dim: int, queue_size: int, temperature: float) -> None:
        super().__init__()
        owner = type(self).__name__
        check_positive(owner, "dim", dim)
        check_positive(owner, "queue_size", queue_size)
        check_positive(owner, "temperature", temperature)
        self.temperature = float(temperature)
        self.teacher_queue = MomentumQueue(int(dim), int(queue_size))

    def _normalised(self, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
        check_pair(student, teacher, type(self).__name__)
        if student.shape[1] != self.teacher_queue.dim:
            raise ValueError(f"{type(self).__name__}: embeddings of size {student.shape[1]} for banks of size {self.teacher_queue.dim}.")
        return F.normalize(student.float(), dim=1), F.normalize(teacher.float(), dim=1)


@LOSSES.register()
class CompRessLoss(_CompRessBase):
    """CompRess-2q. Args: dim (D), queue_size (K, 128000), temperature (T, 0.04)."""

    def __init__(self, dim: int = 512, queue_size: int = 128000, temperature: float = 0.04) -> None:
        super().__init__(dim, queue_size, temperature)
        self.student_queue = MomentumQueue(int(dim), int(queue_size))

    def forward(self, student: Tensor, teacher: Tensor) -> dict[str, Tensor]:
        """student, teacher: (B, D); the teacher keeps its gradient (detach it to freeze the teacher)."""
        with float32(student):
            s, t = self._normalised(student, teacher)
            # copies: autograd keeps the banks for backward, and enqueue() below writes in place
            q_s = self.student_queue.queue.detach().float().clone()
            q_t = self.teacher_queue.queue.detach().float().clone()
            loss, entropy = kl_over_bank(s, t, q_s, q_t, self.temperature)
        self.student_queue.enqueue(s.detach())
        self.teacher_queue.enqueue(t.detach())
        return {"loss": loss, "teacher_entropy": entropy}


@LOSSES.register()
class CompRess1qLoss(_CompRessBase):
    """CompRess-1q: one bank, the teacher's. Args: dim (D), queue_size (K, 128000), temperature (T, 0.04)."""

    def __init__(self, dim: int = 512, queue_size: int = 128000, temperature: float = 0.04) -> None:
        super().__init__(dim, queue_size, temperature)

    def forward(self, student: Tensor, teacher: Tensor) -> dict[str, Tensor]:
        """student: (B, D); teacher: (B, D), detached here (uni-directional)."""
        with float32(student):
            s, t = self._normalised(student, teacher.detach())
            bank = self.teacher_queue.queue.detach().float().clone()
            loss, entropy = kl_over_bank(s, t, bank, bank, self.temperature)
        self.teacher_queue.enqueue(t)
        return {"loss": loss, "teacher_entropy": entropy}
