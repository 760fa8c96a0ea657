"""ITRA's prototype-layer distillers, DINO and ProtoCPC, from the text side to the image side.

Both need a prototype layer (ITRA's ``NEED_PROTOTYPE_LAYER``): K weight-normalised prototypes W
(K, E) in the joint embedding space, rows of norm 1 (DINO's last layer, ``norm_last_layer``).

- student (image): ``s = W normalize(MLP(I))``, the image embedding I through ``head_layers`` DINO
  head layers (Linear, GELU between; E -> ``head_hidden_dim`` -> ... -> E; ITRA: 1, a Linear).
- teacher (text): ``t = sg(W) normalize(T)``: the caption embedding against the *student's*
  prototypes, without gradient (ITRA copies the student's prototype weights into the teacher head
  every step and freezes that head; the frozen random Linear ITRA puts before them is dropped,
  the text embedding being in the joint space already, docs/deviations.md).

Uni-directional: no gradient reaches the text side. The teacher temperature goes linearly from
``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_teacher_temp_epochs`` (DINO's 0.04 ->
0.07 warm-up; ITRA keeps 0.04), per iteration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hirl_like.losses.distillers.dino_vl import CrossModalDINOLoss
from hirl_like.losses.distillers.protocpc import ProtoCPCLoss
from hirl_like.models.heads import DINOHead
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objectives._checks import check_dims, check_positive
from hirl_like.pipelines.objectives.distiller_base import DistillerObjective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES
from hirl_like.schedules import Progress, Span, check_span, linear


class PrototypeDistillerObjective(DistillerObjective):
    """The shared head, prototype layer and teacher-temperature schedule (see the module docstring)."""

    uni_directional = True

    def __init__(
        self,
        backbones: Backbones,
        key: str,
        num_prototypes: int | None,
        head_layers: int,
        head_hidden_dim: int,
        teacher_temp: float,
        warmup_teacher_temp: float,
        warmup_teacher_temp_epochs: Span,
        teacher: str,
    ) -> None:
        if num_prototypes is None or isinstance(num_prototypes, bool) or not isinstance(num_prototypes, int) or num_prototypes <= 0:
            raise ValueError(
                f"{key} needs a prototype layer: set pipeline.{key}.num_prototypes to the number of prototypes "
                f"K (a positive integer; ITRA uses 65536), got {num_prototypes!r}."
            )
        check_positive(key, "teacher_temp", teacher_temp)
        check_positive(key, "warmup_teacher_temp", warmup_teacher_temp)
        check_dims(key, head_hidden_dim=head_hidden_dim)
        if isinstance(head_layers, bool) or not isinstance(head_layers, int) or head_layers < 1:
            raise ValueError(f"pipeline.{key}.head_layers must be an integer >= 1 (1: a Linear, ITRA), got {head_layers!r}.")
        super().__init__(backbones, key, teacher=teacher)
        self.warmup_teacher_temp_epochs = check_span(warmup_teacher_temp_epochs, f"{key}.warmup_teacher_temp_epochs")
        self.temps = (float(warmup_teacher_temp), float(teacher_temp))
        self.teacher_temp = float(warmup_teacher_temp)
        e = self.embed_dim
        self.head = DINOHead(e, num_prototypes, hidden_dim=head_hidden_dim, bottleneck_dim=e, nlayers=head_layers)

    @property
    def prototypes(self) -> nn.Module:
        """The prototype layer (K rows of the joint space, unit norm): ``head.last_layer``."""
        return self.head.last_layer

    def update_schedules(self, progress: Progress) -> dict[str, float]:
        warm = progress.iterations(self.warmup_teacher_temp_epochs)
        self.teacher_temp = linear(*self.temps, progress.iteration, warm)
        return {"teacher_temp": self.teacher_temp}

    def scores(self, step: StepCache) -> tuple[torch.Tensor, torch.Tensor]:
        """(student scores (B, K), teacher scores (B, K), no grad)."""
        student, teacher = self.student_teacher(step)
        student_scores = self.head(student)
        with torch.no_grad():
            weight = self.prototypes.effective_weight().detach()
            teacher_scores = F.linear(F.normalize(teacher.float(), dim=-1), weight.float())
        return student_scores, teacher_scores


@OBJECTIVES.register("vl_dino")
class CrossModalDINOObjective(PrototypeDistillerObjective):
    """DINO across modalities: ``-1/B sum_b softmax((t_b - c) / T_t) . log_softmax(s_b / T_s)``, centre c
    EMA (0.9) of the raw teacher scores (:class:`CrossModalDINOLoss`).

    Args:
        num_prototypes: K (65536, ITRA and DINO); required: None or 0 is refused.
        head_layers, head_hidden_dim: the image head before the prototypes (1 layer, ITRA; DINO: 3, 2048).
        student_temp: T_s (0.1). teacher_temp: T_t (0.04). warmup_teacher_temp /
            warmup_teacher_temp_epochs: the warm-up start (0.04) and length (0: none, ITRA; DINO's
            long runs: 0.04 -> 0.07 over 30 epochs). center_momentum: 0.9.
        teacher: ``text`` (ITRA) or ``image``.
    """

    def __init__(
        self,
        backbones: Backbones,
        num_prototypes: int | None = 65536,
        head_layers: int = 1,
        head_hidden_dim: int = 2048,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: Span = 0.0,
        center_momentum: float = 0.9,
        teacher: str = "text",
    ) -> None:
        super().__init__(backbones, "vl_dino", num_prototypes, head_layers, head_hidden_dim, teacher_temp,
                         warmup_teacher_temp, warmup_teacher_temp_epochs, teacher)
        self.loss = CrossModalDINOLoss(int(num_prototypes), student_temp=student_temp, center_momentum=center_momentum)  # type: ignore[arg-type]

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        return self.loss(*self.scores(step), teacher_temp=self.teacher_temp)


@OBJECTIVES.register("vl_protocpc")
class ProtoCPCObjective(PrototypeDistillerObjective):
    """ProtoCPC: ``1/B sum_b [-q_b . s_b / T_s + log sum_k pi_k exp(s_bk / T_s)]``, q = softmax(t / T_t),
    prior pi EMA (0.9) of the assignments (:class:`ProtoCPCLoss`).

    Args:
        num_prototypes: K (65536, ITRA); required: None or 0 is refused.
        head_layers, head_hidden_dim: the image head before the prototypes (1 layer, ITRA).
        student_temp: T_s (0.1). teacher_temp: T_t (0.04); warmup_teacher_temp /
            warmup_teacher_temp_epochs: as vl_dino (ITRA: none). prior_momentum: 0.9.
        teacher: ``text`` (ITRA) or ``image``.
    """

    def __init__(
        self,
        backbones: Backbones,
        num_prototypes: int | None = 65536,
        head_layers: int = 1,
        head_hidden_dim: int = 2048,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: Span = 0.0,
        prior_momentum: float = 0.9,
        teacher: str = "text",
    ) -> None:
        super().__init__(backbones, "vl_protocpc", num_prototypes, head_layers, head_hidden_dim, teacher_temp,
                         warmup_teacher_temp, warmup_teacher_temp_epochs, teacher)
        self.loss = ProtoCPCLoss(int(num_prototypes), student_temp=student_temp, prior_momentum=prior_momentum)  # type: ignore[arg-type]

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        return self.loss(*self.scores(step), teacher_temp=self.teacher_temp)
