"""Base class of a training objective: one registered term of a pipeline's loss.

An objective owns the modules only it uses (heads, decoders, its loss) and reads everything
shared (students, EMA teachers, their forwards) from a :class:`StepCache`. It declares what it
reads: the batch views (``views``) and the shared forwards (``requires()``, keys of
:data:`~hirl_like.pipelines.forward_table.SHARED_FORWARDS`); the pipeline checks the keys when it
is built and hands the objective a cache scoped to exactly those, so every shared forward runs
once per step for all the objectives that read it. A method is a list of objectives in a YAML
file; a new objective is a new file registered in ``OBJECTIVES`` (plus, if it shares a new
forward, a registered forward), never an edit to the cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from hirl_like.pipelines.backbones import make_teacher
from hirl_like.pipelines.forward_table import ForwardKey
from hirl_like.schedules import Progress, Span, check_span, linear

if TYPE_CHECKING:
    from hirl_like.engine.epoch_context import EpochContext, RunInfo
    from hirl_like.pipelines.backbones import Backbones
    from hirl_like.pipelines.step_cache import StepCache


class Objective(nn.Module):
    """Subclasses declare what they read and implement :meth:`forward`.

    ``views``: the batch entries the objective reads itself (``step.view``), e.g. MAE's
    ``global_crops``; views read only inside shared forwards are the forwards' business.
    The models an objective needs are requested from the backbones in ``__init__``
    (``backbones.require_text()``, ``require_vision_teacher()``, ...), so a run builds only those.
    """

    views: ClassVar[tuple[str, ...]] = ()

    def __init__(self, backbones: "Backbones") -> None:
        super().__init__()
        # Not registered as a child: the pipeline owns the backbones; this is a plain reference.
        object.__setattr__(self, "_backbones", backbones)

    @property
    def backbones(self) -> "Backbones":
        return self._backbones  # type: ignore[return-value]

    def requires(self) -> tuple[ForwardKey | str, ...]:
        """The shared forwards this objective may read (``step.get`` / ``peek`` / ``provide``),
        as keys or plain names; a forward it reads only in some configurations may be listed
        only then (CLIP's teacher embeddings with ``soft_targets``). Nothing is computed until read."""
        return ()

    def prepare(self, step: "StepCache") -> None:
        """Called for every objective before any objective's forward: provide what other
        objectives' forwards may reuse (iBOT's masks, which let CLIP reuse the unmasked rows of the
        masked forward)."""

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

    def check_run(self, run: "RunInfo") -> None:
        """Raise ValueError, before any step, for settings this run cannot meet (HIRL: more
        clusters than training images)."""

    def on_epoch_start(self, epoch: int, context: "EpochContext") -> None:
        """Hook before the first step of ``epoch`` (also on resuming inside it): work over the whole
        training set, e.g. HIRL's clustering. See :mod:`hirl_like.engine.epoch_context`."""


class HeadDistillationObjective(Objective):
    """An objective whose student head is distilled from an EMA copy (DINO, masked distillation,
    text self-distillation): the teacher head, its EMA pairing, the teacher-temperature warm-up
    (linear from ``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_teacher_temp_epochs``,
    per iteration) and the optional frozen last layer over the first ``freeze_last_layer`` (DINO's
    ``cancel_gradients_last_layer``). Both lengths are a :data:`~hirl_like.schedules.Span`:
    epochs, or a share of the run such as ``"40%"``.
    """

    def setup_distillation(
        self,
        head: nn.Module,
        warmup_teacher_temp: float,
        teacher_temp: float,
        warmup_teacher_temp_epochs: Span,
        freeze_last_layer: Span = 0.0,
    ) -> None:
        self.head = head
        self.teacher_head = make_teacher(head)
        self.temps = (warmup_teacher_temp, teacher_temp)
        self.warmup_teacher_temp_epochs = check_span(warmup_teacher_temp_epochs, "warmup_teacher_temp_epochs")
        self.freeze_last_layer = check_span(freeze_last_layer, "freeze_last_layer")
        self.teacher_temp = warmup_teacher_temp

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.head, self.teacher_head)]

    def update_schedules(self, progress: Progress) -> dict[str, float]:
        warm = progress.iterations(self.warmup_teacher_temp_epochs)
        self.teacher_temp = linear(*self.temps, progress.iteration, warm)
        return {"teacher_temp": self.teacher_temp}

    def before_optimizer_step(self, progress: Progress) -> None:
        if progress.iteration < progress.iterations(self.freeze_last_layer):
            for p in self.head.last_layer.parameters():
                p.grad = None
