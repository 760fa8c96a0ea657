"""Component nodes: a mapping whose ``name`` is registered builds that constructor with its other keys.

Also the argument nodes of objectives (``pipeline.ibot: {out_dim: ...}``, the ``**objective_args`` of
a pipeline). This module finds them (:func:`component_nodes`), checks their argument names and types
against the constructor (:func:`validate_components`) and fills in the constructor's own defaults
(:func:`with_defaults`, what ``print_config --defaults`` shows and what the validation checks).
"""

from __future__ import annotations

import copy
from collections import abc
from typing import Any, NamedTuple

from hirl_like.config.errors import ConfigError
from hirl_like.config.typing_check import check_argument_types, signature
from hirl_like.registry import GLOBAL_REGISTRIES, OBJECTIVES, PIPELINES, Registry, RegistryError, check_arguments

# Arguments the code that builds a component passes itself (data/build.py, pipelines/composed.py):
# a value in the config node would be overridden without a word, so it is refused.
INJECTED: dict[tuple[str, str], str] = {
    ("DATASETS", "transform"): "the config's transform node",
    ("DATASETS", "tokenizer"): "the pipeline's text node (its context_length)",
    ("DATASETS", "seed"): "the top-level seed",
    ("OBJECTIVES", "backbones"): "the pipeline",
}
# Arguments the builder always passes, which a node may repeat (they must agree) but whose default
# is not what runs: the text tower is built with the pipeline's embed_dim.
PASSED: dict[tuple[str, str], str] = {(name, "embed_dim"): "the pipeline's embed_dim" for name in
                                      ("text_transformer", "huggingface", "open_clip", "open_clip_text")}
_PLAIN = (type(None), bool, int, float, str)


def owners(name: Any) -> list[Registry]:
    """The registries that hold ``name`` (one, for a component node)."""
    return [reg for reg in GLOBAL_REGISTRIES if isinstance(name, str) and name in reg]


def registered(node: abc.Mapping[str, Any]) -> tuple[Registry, str, Any] | None:
    """(registry, canonical name, constructor) of a plain component node, or None."""
    regs = owners(name := node.get("name"))
    if len(regs) != 1:
        return None
    obj = regs[0].get(name)
    return regs[0], next(key for key, entry in regs[0].items() if entry is obj), obj


def renames(old: Any, new: Any) -> bool:
    """Whether a node named ``old`` given the name ``new`` becomes another component: not the same
    name, nor an alias of the same entry, nor a subclass of it (``hirl`` extends ``Composed`` and
    takes every argument of its node, so a HIRL file keeps its baseline's pipeline node)."""
    def extends(reg: Any) -> bool:
        was, now = reg.get(old), reg.get(new)
        return now is was or (isinstance(was, type) and isinstance(now, type) and issubclass(now, was))

    return old != new and not any(new in reg and extends(reg) for reg in owners(old))


def objective_names(spec: Any) -> list[str] | None:
    """The objectives a pipeline's ``objectives`` value lists (list, {name: weight} or the reference
    code's ``clip_ibot_mae`` string, split greedily on known names), or None when it lists none."""
    if isinstance(spec, abc.Mapping):
        names = list(spec)
    elif isinstance(spec, str):
        names, rest, known = [], spec.strip().lower(), sorted(OBJECTIVES.keys(), key=len, reverse=True)
        while rest:
            match = next((n for n in known if rest == n or rest.startswith(n + "_")), None)
            if match is None:
                return None
            names, rest = [*names, match], rest[len(match) + 1:]
    elif isinstance(spec, list):
        names = spec
    else:
        return None
    return names if names and all(isinstance(n, str) and n in OBJECTIVES for n in names) else None


def _active_objectives(obj: Any, node: abc.Mapping[str, Any]) -> list[str]:
    """The objectives a pipeline node runs: its ``objectives`` or ``base`` (or that argument's default), else the
    objective-named arguments of its constructor (the CLIP pipeline's ``clip``)."""
    params = signature(obj).parameters
    for key in ("objectives", "base"):  # base: the method HIRL wraps
        if key in params:
            spec = node.get(key, params[key].default)
            return objective_names(list(spec) if isinstance(spec, tuple) else spec) or []
    return [name for name in params if name in OBJECTIVES]


class Node(NamedTuple):
    """A component node or objective argument node found in a plain config."""

    path: str  # dotted, '' for the top
    node: dict[str, Any]
    name: str  # the registered (canonical) name, or the objective's name
    obj: Any  # the constructor
    registry: str  # MODELS, PIPELINES, OBJECTIVES, ...
    active: bool  # False for an objective node its pipeline does not run


def component_nodes(cfg: abc.Mapping[str, Any], path: str = "") -> abc.Iterator[Node]:
    """Every component node and objective argument node at or below ``cfg``, parents first."""
    if (found := registered(cfg)) is not None:
        yield Node(path, dict(cfg), found[1], found[2], found[0].name, True)
        if found[0] is PIPELINES:
            active = _active_objectives(found[2], cfg)
            for key, value in cfg.items():
                if key in OBJECTIVES and isinstance(value, abc.Mapping):
                    yield Node(f"{path}.{key}" if path else key, dict(value), key, OBJECTIVES.get(key), "OBJECTIVES",
                               key in active)
    for key, value in cfg.items():
        if isinstance(value, abc.Mapping):
            yield from component_nodes(value, f"{path}.{key}" if path else key)


def _registry_name(obj: Any) -> str:
    return next(reg.name for reg in GLOBAL_REGISTRIES if any(entry is obj for _, entry in reg.items()))


def validate_components(cfg: abc.Mapping[str, Any], path: str = "") -> None:
    """Check each component node of a plain config against its constructor: argument names
    (:func:`~hirl_like.registry.check_arguments`), arguments the builder passes itself, annotated
    types, then the class's own ``validate_config(node, path)`` hook for what its ``**kwargs`` take."""
    for where, node, name, obj, registry, _ in component_nodes(cfg, path):
        args = {k: v for k, v in node.items() if k != "name" or registry == "OBJECTIVES"}
        context = f"config node {where or '(top)'} ({'objective' if registry == 'OBJECTIVES' else registry} {name!r})"
        for key in args:
            if (source := INJECTED.get((registry, key))) is not None:
                raise ConfigError(f"{context}: {where}.{key} is passed by the code from {source}, so a value here "
                                  f"would be ignored. Remove {where}.{key}.")
        try:
            check_arguments(obj, args, context=context)
            check_argument_types(obj, args, context)
            if callable(hook := getattr(obj, "validate_config", None)):
                hook(args, where)
        except (RegistryError, ValueError, TypeError) as err:
            raise ConfigError(str(err)) from None


def constructor_defaults(obj: Any, name: str = "") -> dict[str, Any]:
    """The plain default of each keyword argument of ``obj`` (component ``name``; tuples as lists),
    less the arguments its builder passes (``INJECTED``, ``PASSED``)."""
    registry, out = _registry_name(obj), {}
    for arg, p in signature(obj).parameters.items():
        default = list(p.default) if isinstance(p.default, tuple) else p.default
        plain = isinstance(default, _PLAIN) or (isinstance(default, list) and all(isinstance(v, _PLAIN) for v in default))
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty and plain \
                and (registry, arg) not in INJECTED and (name, arg) not in PASSED:
            out[arg] = default
    return out


def with_defaults(cfg: abc.Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A deep copy of plain ``cfg`` with every component node (and every active objective's argument
    node) completed by its constructor's defaults; and {dotted path: component} of each filled value."""
    filled: dict[str, Any] = copy.deepcopy(dict(cfg))
    marks: dict[str, str] = {}
    todo = [(n.path, n.name, n.obj, n.active) for n in component_nodes(filled)]
    for path, name, obj, active in todo:
        if not active:
            continue
        node = filled
        for part in path.split(".") if path else ():
            if not isinstance(node.get(part), dict):  # an objective node given as null runs with its defaults
                node[part] = {}
            node = node[part]
        pipeline = _registry_name(obj) == "PIPELINES"
        for key, value in constructor_defaults(obj, name).items():
            if key not in node and not (pipeline and key in OBJECTIVES):  # objective nodes: filled below
                node[key] = value
                marks[f"{path}.{key}" if path else key] = name
        for objective in _active_objectives(obj, node) if pipeline else ():
            if not isinstance(node.get(objective), dict):
                node[objective] = {}
                marks[f"{path}.{objective}" if path else objective] = objective
                todo.append((f"{path}.{objective}" if path else objective, objective, OBJECTIVES.get(objective), True))
    return filled, marks
