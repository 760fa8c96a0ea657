"""Per-iteration schedules (pure functions of the iteration, so a resumed run recomputes them
exactly from the saved iteration counter).

``Progress`` is what the trainer hands to pipelines every step.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

Span = float | int | str
"""A schedule length: a number of epochs (``3``, ``0.5``) or a share of the whole run (``"40%"``).

A share keeps a schedule's shape when the budget changes: a ramp over ``"40%"`` is 10 of 25
epochs on CC3M and 160 of 400 iterations in a quick comparison, where ``10`` epochs would never end.
"""

_PERCENT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*%\s*")


def check_span(span: Span, key: str) -> Span:
    """Return ``span`` if it is a valid schedule length, else raise ValueError naming ``key``."""
    if isinstance(span, bool) or not isinstance(span, (int, float, str)):
        raise ValueError(f"{key} must be a number of epochs or a share of the run like '40%', got {span!r}.")
    if isinstance(span, str):
        match = _PERCENT.fullmatch(span)
        if match is None or float(match.group(1)) > 100:
            raise ValueError(f"{key}={span!r}: write a share of the run as a percentage in [0%, 100%], e.g. '40%'.")
    elif not (math.isfinite(span) and span >= 0):
        raise ValueError(f"{key} must be a finite number of epochs >= 0, got {span!r}.")
    return span


@dataclass(frozen=True)
class Progress:
    """Where training stands: global ``iteration`` (0-based) of ``total_iterations``; the run's ``seed``."""

    iteration: int
    iters_per_epoch: int
    total_iterations: int
    seed: int = 0

    @property
    def epoch(self) -> float:
        """Fractional epoch, e.g. 2.5 half-way through the third epoch."""
        return self.iteration / max(self.iters_per_epoch, 1)

    def iterations(self, span: Span) -> float:
        """The number of iterations a :data:`Span` covers in this run (epochs x iterations per
        epoch, or the share x total iterations)."""
        if isinstance(span, str):
            return float(_PERCENT.fullmatch(span).group(1)) / 100.0 * self.total_iterations  # type: ignore[union-attr]
        return float(span) * self.iters_per_epoch

    def epochs(self, span: Span) -> float:
        """A :data:`Span` in (fractional) epochs."""
        return self.iterations(span) / max(self.iters_per_epoch, 1)


def cosine(start: float, end: float, step: float, total: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (step >= total)."""
    if total <= 0 or step >= total:
        return end
    step = max(step, 0.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * step / total))


def linear(start: float, end: float, step: float, total: float) -> float:
    """Linear ramp from ``start`` (step 0) to ``end`` (step >= total)."""
    if total <= 0 or step >= total:
        return end
    return start + (end - start) * max(step, 0.0) / total


def warmup_cosine(base: float, final: float, warmup: float, total: float, step: float, start: float = 0.0) -> float:
    """Linear warm-up from ``start`` to ``base`` over ``warmup`` steps, then cosine to ``final`` at ``total``.

    The lr schedule of DINO/iBOT/Harmony (``utils.cosine_scheduler`` with warm-up), per iteration.
    """
    if step < warmup:
        return linear(start, base, step, warmup)
    return cosine(base, final, step - warmup, total - warmup)
