"""Named shared forwards: the encoder outputs objectives read from a step, each computed once.

A shared forward is a function ``compute(step, **args) -> value`` registered under a name, with
the batch views it reads (``views``) and the other shared forwards it reads (``uses``). An
objective declares the forwards it consumes as :class:`ForwardKey` s (a name plus arguments,
e.g. ``forward_key("masked_text", mask_prob=0.2)``); the step memoises values by key, so every
objective asking for the same key shares one computation, whatever the order of objectives.

Some entries have no ``compute``: their value is *provided* by an objective's
:meth:`~hirl_like.pipelines.objective.Objective.prepare` before any forward runs (iBOT's block
masks), so that forwards of other objectives can reuse what depends on it.

Forwards register into :data:`SHARED_FORWARDS` from their own modules
(:mod:`hirl_like.pipelines.forwards`); a new objective adds forwards there (or in its own file),
never to the step cache.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ForwardKey:
    """One shared forward of a step: a registered name and its (sorted, hashable) arguments."""

    name: str
    args: tuple[tuple[str, Hashable], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.args)

    def __str__(self) -> str:
        if not self.args:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.args)})"


def forward_key(name: str | ForwardKey, **args: Hashable) -> ForwardKey:
    """``forward_key("teacher_text_tokens", causal=False)``; a key passes through unchanged."""
    if isinstance(name, ForwardKey):
        if args:
            raise ValueError(f"forward_key got a ForwardKey ({name}) and extra arguments {args}; pass one or the other.")
        return name
    if not isinstance(name, str) or not name:
        raise ValueError(f"a shared forward is named by a non-empty string, got {name!r}.")
    return ForwardKey(name, tuple(sorted(args.items())))


@dataclass(frozen=True)
class SharedForward:
    """A registered forward.

    Attributes:
        name: the key name objectives ask for.
        compute: ``(step, **args) -> value``; None when an objective's ``prepare`` provides the value.
        views: batch entries ``compute`` reads (``step.view``).
        uses: names of the shared forwards ``compute`` reads (``step.get`` / ``step.peek``).
        doc: one line on what the value is (shapes), for error messages and listings.
    """

    name: str
    compute: Callable[..., Any] | None
    views: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    doc: str = ""

    @property
    def provided(self) -> bool:
        return self.compute is None


class ForwardTable:
    """name -> :class:`SharedForward`, with decorator registration and checked look-ups."""

    def __init__(self, entries: Mapping[str, SharedForward] | None = None) -> None:
        self._entries: dict[str, SharedForward] = dict(entries or {})

    # -- registration ---------------------------------------------------------------------------
    def register(self, name: str, *, views: Iterable[str] = (), uses: Iterable[str] = ()) -> Callable[[F], F]:
        """Decorator: register ``compute(step, **args)`` as the shared forward ``name``."""

        def decorator(compute: F) -> F:
            doc = (inspect.getdoc(compute) or "").split("\n\n")[0].replace("\n", " ")
            self.add(SharedForward(name, compute, tuple(views), tuple(uses), doc))
            return compute

        return decorator

    def declare_provided(self, name: str, doc: str, *, views: Iterable[str] = ()) -> None:
        """Register ``name`` as a value an objective's ``prepare`` provides (``step.provide``)."""
        self.add(SharedForward(name, None, tuple(views), (), doc))

    def add(self, entry: SharedForward) -> None:
        existing = self._entries.get(entry.name)
        if existing is not None and existing != entry:
            where = getattr(existing.compute, "__module__", "a provided value")
            raise ValueError(f"shared forward {entry.name!r} is already registered (by {where}); pick another name.")
        self._entries[entry.name] = entry

    def with_compute(self, name: str, compute: Callable[..., Any]) -> "ForwardTable":
        """A copy of this table in which ``name`` computes with ``compute`` (tests swap in a
        reference implementation this way, without touching the global table)."""
        table = ForwardTable(self._entries)
        table._entries[name] = replace(self.get(name), compute=compute)
        return table

    # -- look-up --------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> SharedForward:
        if name in self._entries:
            return self._entries[name]
        hint = difflib.get_close_matches(str(name), self.keys(), n=1)
        raise KeyError(
            f"no shared forward {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else ".")
            + f" Registered: {', '.join(self.keys())}."
        )

    def check(self, key: ForwardKey, owner: str) -> None:
        """Raise ValueError (naming ``owner``) when ``key`` names no forward or its arguments do not
        fit the forward's signature; called when a pipeline is built, so misspellings fail early."""
        try:
            entry = self.get(key.name)
        except KeyError as err:
            raise ValueError(f"{owner} requires {err.args[0]}") from None
        if entry.provided:
            if key.args:
                raise ValueError(f"{owner} requires {key}, but {key.name!r} is a provided value and takes no arguments.")
            return
        try:
            inspect.signature(entry.compute).bind(None, **key.kwargs)  # type: ignore[arg-type]
        except TypeError as err:
            raise ValueError(f"{owner} requires {key}: {err} (shared forward {key.name!r}).") from None

    def closure(self, names: Iterable[str]) -> set[str]:
        """``names`` and every forward they use, transitively."""
        seen: set[str] = set()
        todo = list(names)
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(self.get(name).uses)
        return seen


SHARED_FORWARDS = ForwardTable()
"""The global table; :mod:`hirl_like.pipelines.forwards` fills it on import."""
