"""Base class of a training objective: one registered term of a pipeline's loss.

An objective owns the modules only it uses (heads, decoders, its loss) and reads everything
shared (students, EMA teachers, their cached forwards) from a :class:`StepCache`. A method is a
list of objectives in a YAML file; a new objective is a new file registered in ``OBJECTIVES``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from hirl_like.pipelines.backbones import make_teacher
from hirl_like.schedules import Progress, linear

if TYPE_CHECKING:
    from hirl_like.pipelines.backbones import Backbones
    from hirl_like.pipelines.step_cache import StepCache


class Objective(nn.Module):
    """Subclasses set the class flags and implement :meth:`forward`.

    Class flags say what the objective needs, so that the pipeline builds only that:
        needs_text: a text student; needs_vision_teacher / needs_text_teacher: EMA teachers;
        needs_mask_token: the iBOT mask-token path of the student ViT.
    """

    needs_text: bool = False
    needs_vision_teacher: bool = False
    needs_text_teacher: bool = False
    needs_mask_token: bool = False

    def __init__(self, backbones: "Backbones") -> None:
        super().__init__()
        # Not registered as a child: the pipeline owns the backbones; this is a plain reference.
        object.__setattr__(self, "_backbones", backbones)

    @property
    def backbones(self) -> "Backbones":
        return self._backbones  # type: ignore[return-value]

    def prepare(self, step: "StepCache") -> None:
        """Called for every objective before any objective's forward: draw what other objectives
        may reuse (iBOT's masks, which let CLIP reuse the unmasked rows of the masked forward)."""

    def forward(self, step: "StepCache") -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """Return {"loss": term, other detached diagnostics...}."""
        raise NotImplementedError

    def update_schedules(self, progress: Progress) -> dict[str, float]:
        """Set per-iteration values (temperatures, weights) and return them for logging."""
        return {}

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(student, teacher) modules of this objective that follow the EMA (e.g. iBOT heads)."""
        return []

    def before_optimizer_step(self, progress: Progress) -> None:
        """Hook after backward, before the step (e.g. iBOT's freeze_last_layer)."""

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Hook after the step (e.g. clamping CLIP's logit scale)."""


class HeadDistillationObjective(Objective):
    """An objective whose student head is distilled from an EMA copy (DINO, masked distillation,
    text self-distillation): the teacher head, its EMA pairing, the teacher-temperature warm-up
    (linear from ``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_teacher_temp_epochs``,
    per iteration) and the optional frozen last layer of the first ``freeze_last_layer`` epochs
    (DINO's ``cancel_gradients_last_layer``).
    """

    def setup_distillation(
        self,
        head: nn.Module,
        warmup_teacher_temp: float,
        teacher_temp: float,
        warmup_teacher_temp_epochs: float,
        freeze_last_layer: float = 0.0,
    ) -> None:
        self.head = head
        self.teacher_head = make_teacher(head)
        self.temps = (warmup_teacher_temp, teacher_temp)
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.freeze_last_layer = freeze_last_layer
        self.teacher_temp = warmup_teacher_temp

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.head, self.teacher_head)]

    def update_schedules(self, progress: Progress) -> dict[str, float]:
        warm = self.warmup_teacher_temp_epochs * progress.iters_per_epoch
        self.teacher_temp = linear(*self.temps, progress.iteration, warm)
        return {"teacher_temp": self.teacher_temp}

    def before_optimizer_step(self, progress: Progress) -> None:
        if progress.epoch < self.freeze_last_layer:
            for p in self.head.last_layer.parameters():
                p.grad = None
