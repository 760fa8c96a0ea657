"""The one validation pass of a loaded config, run by :func:`~hirl_like.config.load_config` (so by
``print_config``, ``train.py`` and every evaluation) before anything is built.

Given values are checked against the rule table (:mod:`hirl_like.config.rules`): every float finite,
plain keys by path, component arguments by name. Relations and schedule lengths are checked on the
config completed with each constructor's defaults, since those run too. The first refusal raises a
one-line :class:`ConfigError` naming where the value came from, the key, the value and what is
allowed; a schedule over half the run is a one-line warning on stderr.
"""

from __future__ import annotations

import difflib
import math
from collections import abc
from collections.abc import Callable
from typing import Any

from hirl_like.config.components import component_nodes, with_defaults
from hirl_like.config.errors import ConfigError, short, warn
from hirl_like.config.rules import ARGUMENTS, CLOSED_NODES, COUNT, KEYS, OPTIMIZER_KEYS, RELATIONS, SPAN, WARMUPS

_MISSING = object()


def _get(node: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(node, abc.Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _floats(node: Any, path: str) -> abc.Iterator[tuple[str, float]]:
    """(path, value) of every float at or below ``node`` (list items as ``path[i]``)."""
    if isinstance(node, float):
        yield path, node
    elif isinstance(node, abc.Mapping):
        for key, value in node.items():
            yield from _floats(value, _join(path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _floats(value, f"{path}[{i}]")


def validate(cfg: abc.Mapping[str, Any], source: Callable[[str], str] = lambda path: "config") -> None:
    """Refuse the first value of plain, merged ``cfg`` that breaks a rule; warn about long warm-ups.

    ``source(path)`` names where a value came from (a file, an override) for the message.
    """
    def refuse(path: str, value: Any, allowed: str) -> None:
        raise ConfigError(f"{source(path)}: {path}={short(value)}: must be {allowed}.")

    for path, value in _floats(cfg, ""):
        if not math.isfinite(value):
            refuse(path, value, "a finite number")
    for path, rule in KEYS.items():
        if (value := _get(cfg, path)) is not _MISSING and value is not None and not rule.accepts(value):
            refuse(path, value, rule.allowed)
    for found in component_nodes(cfg):
        for key, value in found.node.items():
            rule = ARGUMENTS.get(f"{found.name}.{key}") or ARGUMENTS.get(key)
            if value is not None and rule is not None and not rule.accepts(value):
                refuse(_join(found.path, key), value, rule.allowed)
    _check_optimizer_keys(cfg, source)
    _check_closed_nodes(cfg, source)

    filled, defaults = with_defaults(cfg)

    def shown(path: str, value: Any) -> str:  # KEY=VALUE, saying where a constructor's default was used
        return f"{path}={short(value)}" + (f" (default of {defaults[path]})" if path in defaults else "")

    for found in component_nodes(filled):
        for relation in RELATIONS:
            values = [_get(found.node, key) for key in relation.keys]
            if found.name not in relation.components or any(v is _MISSING or v is None for v in values):
                continue
            try:
                ok = relation.test(*values)
            except (TypeError, ValueError, ArithmeticError):  # a value the rules above refused in another form
                continue
            if not ok:  # refused on the key an override gave (the one just changed), else on the first
                paths = [_join(found.path, key) for key in relation.keys]
                given = [p for p in paths if p not in defaults] or paths[:1]
                key = next((p for p in reversed(given) if source(p).startswith("override")), given[0])
                raise ConfigError(f"{source(key)}: {shown(key, values[paths.index(key)])}: {relation.keys[0]} must be "
                                  f"{relation.allowed} ({', '.join(map(shown, paths, values))}).")
    _check_warmups(filled, defaults, source)


def _check_optimizer_keys(cfg: abc.Mapping[str, Any], source: Callable[[str], str]) -> None:
    """Each key of the optimizer node is one its optimizer takes (engine/optim.py refuses the others
    only once the model is built)."""
    node = cfg.get("optimizer")
    name = node.get("name") if isinstance(node, abc.Mapping) else None
    if not isinstance(name, str) or (allowed := OPTIMIZER_KEYS.get(name.lower())) is None:
        return
    for key in node:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            raise ConfigError(f"{source('optimizer.' + key)}: optimizer key {short(key)} is not an argument of optimizer "
                              f"{name!r}.{' Did you mean ' + repr(close[0]) + '?' if close else ''} "
                              f"It takes: {', '.join(allowed[1:])}.")


def _check_closed_nodes(cfg: abc.Mapping[str, Any], source: Callable[[str], str]) -> None:
    """Each key of a closed node (``CLOSED_NODES``, e.g. ``online_eval``) is one ``KEYS`` has a rule
    for, also when it was added with ``+key=value`` (the code reading the node knows no other)."""
    for node_path in CLOSED_NODES:
        node = _get(cfg, node_path)
        if not isinstance(node, abc.Mapping):
            continue
        prefix = node_path + "."
        allowed = [path[len(prefix):] for path in KEYS if path.startswith(prefix)]
        for key in node:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                raise ConfigError(f"{source(prefix + str(key))}: unknown config key {short(prefix + str(key))}."
                                  f"{' Did you mean ' + repr(close[0]) + '?' if close else ''} "
                                  f"Valid keys under {node_path!r}: {', '.join(allowed)}.")


def _check_warmups(filled: abc.Mapping[str, Any], defaults: dict[str, str], source: Callable[[str], str]) -> None:
    """Schedule lengths (``WARMUPS``) against ``epochs``: longer is refused, over half warned about."""
    epochs = filled.get("epochs")
    if not COUNT.accepts(epochs):
        return
    spans = [(path, value) for path in WARMUPS if (value := _get(filled, path)) is not _MISSING]
    spans += [(_join(found.path, key), found.node[key]) for found in component_nodes(filled)
              if found.registry == "OBJECTIVES" and found.active for key in WARMUPS if key in found.node]
    warnings = []
    for path, value in spans:
        if not SPAN.accepts(value):
            continue  # refused above
        share = float(value.strip().rstrip("%")) / 100 if isinstance(value, str) else value / epochs
        what = WARMUPS.get(path) or WARMUPS[path.rsplit(".", 1)[-1]]
        default = f" (default of {defaults[path]})" if path in defaults else ""
        src = source(path) if path not in defaults else source(path.rsplit(".", 1)[0])
        src = source("epochs") if source("epochs").startswith("override") else src  # the key just changed
        if share > 1:
            raise ConfigError(f"{src}: {path}={short(value)}{default} is longer than the run (epochs={epochs}): {what} "
                              "for all of it. Lower it or raise epochs.")
        if share > 0.5:
            warnings.append(f"{path}={short(value)}{default} is {share:.0%} of the run (epochs={epochs}): {what} "
                            "for most of it. Lower it or raise epochs.")
    for message in warnings:  # only once nothing is refused: an error stays the one line printed
        warn(message)
