"""ITRA's CompRess distillers (Koohpayegani et al. 2020): similarity distributions over memory banks."""

from __future__ import annotations

import torch

from hirl_like.losses.distillers.compress import CompRess1qLoss, CompRessLoss
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objectives.distiller_base import DistillerObjective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES


@OBJECTIVES.register("vl_compress_2q")
class CompRess2qObjective(DistillerObjective):
    """CompRess-2q: ``KL(softmax(t Q_t^T / T) || softmax(s Q_s^T / T))`` with a bank of teacher and one of
    student embeddings (:class:`CompRessLoss`); gradients reach both towers unless ``detach_teacher``.

    Args: queue_size (K, 128000), temperature (T, 0.04), teacher (``text`` / ``image``), detach_teacher.
    The banks hold (K, E) floats each and are saved in the checkpoint.
    """

    def __init__(self, backbones: Backbones, queue_size: int = 128000, temperature: float = 0.04,
                 teacher: str = "text", detach_teacher: bool = False) -> None:
        super().__init__(backbones, "vl_compress_2q", teacher=teacher, detach_teacher=detach_teacher)
        self.loss = CompRessLoss(dim=self.embed_dim, queue_size=queue_size, temperature=temperature)

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        return self.loss(*self.student_teacher(step))


@OBJECTIVES.register("vl_compress_1q")
class CompRess1qObjective(DistillerObjective):
    """CompRess-1q: both similarity distributions over the teacher's bank (:class:`CompRess1qLoss`).
    Uni-directional: no gradient reaches the teacher tower.

    Args: queue_size (K, 128000), temperature (T, 0.04), teacher (``text`` / ``image``).
    """

    uni_directional = True

    def __init__(self, backbones: Backbones, queue_size: int = 128000, temperature: float = 0.04,
                 teacher: str = "text") -> None:
        super().__init__(backbones, "vl_compress_1q", teacher=teacher)
        self.loss = CompRess1qLoss(dim=self.embed_dim, queue_size=queue_size, temperature=temperature)

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        return self.loss(*self.student_teacher(step))
