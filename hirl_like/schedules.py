"""Per-iteration schedules (pure functions of the iteration, so a resumed run recomputes them
exactly from the saved iteration counter).

``Progress`` is what the trainer hands to pipelines every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
