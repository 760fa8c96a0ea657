"""Does a plain config value fit a type annotation? Used for typed keys and constructor arguments."""

from __future__ import annotations

import functools
import inspect
import math
import os
import types
import typing
from collections import abc
from typing import Any

from omegaconf import DictConfig, ListConfig

from hirl_like.config.errors import ConfigError, kind, short

NULLABLE_KEYS = frozenset({"grad_clip", "max_iterations", "online_eval.val_split"})  # a value by default, null = off
NUMBER_KEYS = frozenset({"optimizer.warmup_epochs", "online_eval.knn_every"})  # written as an int, takes fractions too
SPAN_KEYS = frozenset({"online_eval.knn_every"})  # a schedules.Span: also a share of the run as text, '10%'


def fits(value: Any, hint: Any) -> bool:
    """Whether a plain config value matches a type hint. Hints it cannot judge (Any, a class such
    as Backbones, Literal, ...) accept anything: the constructor has the last word."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    cls = origin or hint
    if hint is Any or not isinstance(cls, type):
        return True
    if cls in (type(None), bool):
        return isinstance(value, cls)
    if cls in (int, float):  # a bool is an int to Python, not to a config; an int is a float
        return isinstance(value, int if cls is int else (int, float)) and not isinstance(value, bool)
    if issubclass(cls, (str, os.PathLike)):
        return isinstance(value, str)
    if issubclass(cls, abc.Sequence):  # list, tuple, Sequence[T]: a YAML list, elements checked
        element = args[0] if args and all(a in (args[0], ...) for a in args) else Any
        return isinstance(value, list) and all(fits(v, element) for v in value)
    return isinstance(value, abc.Mapping) if issubclass(cls, abc.Mapping) else True


@functools.cache
def signature(obj: Any, eval_str: bool = False) -> inspect.Signature:
    """``inspect.signature``, once per registered constructor (every config load asks for each)."""
    return inspect.signature(obj, eval_str=eval_str)


def check_argument_types(obj: Any, args: abc.Mapping[str, Any], context: str) -> None:
    """Each argument against the constructor's annotation; null also where the default is None."""
    try:
        written, params = signature(obj).parameters, signature(obj, eval_str=True).parameters
    except Exception:  # noqa: BLE001 - an annotation it cannot evaluate: the constructor checks its arguments
        return
    for key, value in args.items():
        if (p := params.get(key)) is None or p.kind is p.VAR_KEYWORD or p.annotation is p.empty:
            continue
        if not fits(value, typing.Optional[p.annotation] if p.default is None else p.annotation):
            text = a if isinstance(a := written[key].annotation, str) else inspect.formatannotation(a)
            raise ConfigError(f"{context}: argument {key!r} expects {text}, got {kind(value)} {short(value)}.")


def check_value_type(current: Any, value: Any, full: str, source: str, free: bool) -> None:
    """Refuse a value that may not replace ``current``, the value at ``full``: a mapping only by a
    mapping (or null where allowed), a typed value only by one of its type. ``free``: a node out
    of struct mode (a component's), whose values the constructor types instead."""
    if isinstance(current, DictConfig) and not (value is None and (free or full in NULLABLE_KEYS)):
        raise ConfigError(f"{source}: {full} is a mapping (keys: {', '.join(current) or 'none'}), got {kind(value)} "
                          f"{short(value)}. Set its keys with {full}.KEY=VALUE, or give a mapping: {full}={{KEY: VALUE}}.")
    if free or current is None or isinstance(current, DictConfig):
        return  # component arguments are typed by the constructor; a null takes anything
    hint: Any = float | str if full in SPAN_KEYS else float if full in NUMBER_KEYS else type(current)
    if isinstance(current, ListConfig):  # a list of one scalar type keeps its element type
        kinds = {type(v) for v in current}
        hint = list[kinds.pop()] if len(kinds) == 1 and kinds <= {bool, int, float, str} else list
    hint = hint | None if full in NULLABLE_KEYS else hint
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{source}: {full} cannot be nan. Give a number.")
    if not fits(value, hint):
        fix = "Quote the value to make it text, e.g. key='1'." if hint is str else "Give a value of that type."
        raise ConfigError(f"{source}: {full} expects {inspect.formatannotation(hint)} (currently {short(current)}), "
                          f"got {kind(value)} {short(value)}. {fix}")
