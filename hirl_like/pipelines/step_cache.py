"""The per-step memo of shared forwards, and the step's seeded randomness.

The cache knows no method: it reads batch views by name, computes registered shared forwards
(:mod:`hirl_like.pipelines.forward_table`) by key, at most once per step, and holds the values
objectives provide in ``prepare``. Each objective reads through a *scoped* view of the cache
that admits only what the objective declared (``Objective.views`` / ``Objective.requires()``);
each forward reads through one that admits only its registered ``views`` / ``uses``. So the
declarations are complete by construction: an undeclared read fails with the fix in the message.

Randomness of a step (iBOT block masks, MAE token drop, MLM masking) comes from generators
seeded by (seed, iteration, rank), so a resumed run draws exactly the same masks.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from hirl_like.data.captions import mix_seed
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.forward_table import SHARED_FORWARDS, ForwardKey, ForwardTable, forward_key
from hirl_like.schedules import Progress

_SALT_STEP = 0x57E9
_REQUIRED = object()

# What to do when a view is missing, for the views the built-in transforms make.
VIEW_HINTS = {
    "global_crops": "use a transform that makes them (e.g. MultiCropTransform)",
    "text": "this objective needs an image-caption dataset",
}


def step_seed(seed: int, iteration: int, rank: int) -> int:
    """A 63-bit seed that differs for every (seed, iteration, rank), identical in every process.

    A pure integer mix (splitmix64), never ``hash()``: string hashing is salted per process
    (PYTHONHASHSEED), which made masks and drop path differ after a restart.
    """
    return mix_seed(_SALT_STEP, seed, iteration, rank) >> 1


@dataclass(frozen=True)
class _Scope:
    """Who reads (for messages), what it may read, and how to declare more."""

    owner: str
    allows: Callable[[ForwardKey], bool]
    views: frozenset[str]
    fix: str


class StepCache:
    """Per-step memo of shared forwards.

    Args:
        backbones: the pipeline's students and EMA teachers (forwards read them).
        batch: the step's batch: views by name, e.g. ``global_crops`` (list of (B, 3, H, W)),
            ``local_crops`` (list), ``text`` (B, L) token ids, ``simclr_views`` (list).
        progress: where training stands (seeds the step's generators).
        rank: this process's rank (seeds the step's generators).
        forwards: the table of shared forwards (default: the global one).

    A cache built directly is unscoped (reads anything: tests, tools); the pipeline hands each
    objective :meth:`scoped` views of one cache, which share the memo and the generators.
    """

    def __init__(
        self,
        backbones: Backbones,
        batch: dict[str, Any],
        progress: Progress,
        rank: int = 0,
        forwards: ForwardTable = SHARED_FORWARDS,
    ) -> None:
        self.backbones = backbones
        self.batch = batch
        self.progress = progress
        self.forwards = forwards
        seed = step_seed(progress.seed, progress.iteration, rank)
        self.rng = random.Random(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self._memo: dict[ForwardKey, Any] = {}
        self._scope: _Scope | None = None

    # -- scopes -----------------------------------------------------------------------------------
    def scoped(self, owner: str, keys: Iterable[ForwardKey | str], views: Iterable[str], fix: str) -> "StepCache":
        """A view of this cache (same memo and generators) that admits only ``keys`` and ``views``.

        ``owner`` names the reader in errors; ``fix`` says where to declare a missing read.
        """
        allowed = frozenset(forward_key(k) for k in keys)
        return self._with_scope(_Scope(owner, allowed.__contains__, frozenset(views), fix))

    def _for_forward(self, key: ForwardKey) -> "StepCache":
        entry = self.forwards.get(key.name)
        uses = frozenset(entry.uses)
        fix = f"add it to the uses=/views= of shared forward {key.name!r}"
        scope = _Scope(f"shared forward {key.name!r}", lambda k: k.name in uses, frozenset(entry.views), fix)
        return self._with_scope(scope)

    def _with_scope(self, scope: _Scope) -> "StepCache":
        view = copy.copy(self)  # shallow: the memo dict and the generators are shared
        view._scope = scope
        return view

    def _check(self, key: ForwardKey) -> None:
        if self._scope is not None and not self._scope.allows(key):
            raise RuntimeError(f"{self._scope.owner} read the shared forward {key} without declaring it; {self._scope.fix}.")

    # -- batch views ------------------------------------------------------------------------------
    def view(self, name: str, default: Any = _REQUIRED) -> Any:
        """The batch entry ``name`` (lists as lists). Missing or empty: ``default`` when given,
        else KeyError saying what makes the view."""
        if self._scope is not None and name not in self._scope.views:
            raise RuntimeError(f"{self._scope.owner} read the batch view {name!r} without declaring it; {self._scope.fix}.")
        value = self.batch.get(name)
        if isinstance(value, (list, tuple)):
            value = list(value)
        if value is None or (isinstance(value, list) and not value):
            if default is not _REQUIRED:
                return default
            reader = f" ({self._scope.owner} reads it)" if self._scope is not None else ""
            hint = VIEW_HINTS.get(name, "make the data transform produce it")
            raise KeyError(f"the batch has no {name!r}{reader}; {hint}.")
        return value

    # -- shared forwards ------------------------------------------------------------------------
    def get(self, key: ForwardKey | str, **args: Any) -> Any:
        """The value of shared forward ``key``, computed on the first request of this step."""
        key = forward_key(key, **args)
        self._check(key)
        if key not in self._memo:
            entry = self.forwards.get(key.name)
            if entry.provided:
                raise RuntimeError(
                    f"{key} ({entry.doc}) must be provided by an objective's prepare() before it is read; "
                    "none did in this step."
                )
            self._memo[key] = entry.compute(self._for_forward(key), **key.kwargs)  # type: ignore[misc]
        return self._memo[key]

    def peek(self, key: ForwardKey | str, **args: Any) -> Any | None:
        """The value of ``key`` if it was computed or provided in this step, else None (computes nothing)."""
        key = forward_key(key, **args)
        self._check(key)
        return self._memo.get(key)

    def provide(self, key: ForwardKey | str, value: Any) -> None:
        """Set a provided value (an objective's ``prepare``); only one objective may provide a key."""
        key = forward_key(key)
        self._check(key)
        if not self.forwards.get(key.name).provided:
            raise RuntimeError(f"{key} is computed by its shared forward; it cannot be provided.")
        if key in self._memo:
            raise RuntimeError(f"{key} was already provided in this step; only one objective may provide it.")
        self._memo[key] = value
