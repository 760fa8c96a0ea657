"""Configs: YAML files with ``_base_`` inheritance, typed ``key=value`` overrides, strict keys.

Order of precedence (DINOv2 style): the package defaults (``hirl_like/defaults.yaml``), then the
chain of ``_base_`` files (base first), then the file itself, then command-line overrides.

Rules:
- Values keep YAML types: ``false`` is a bool, ``1e-4`` a float, ``null`` None, ``[0.32,1.0]`` a
  list (YAML 1.2 float syntax is accepted too, unlike PyYAML's YAML 1.1 resolver). Dates stay
  strings; sets, binary and other non-plain YAML types are refused.
- A key that the defaults/base do not define is an error naming the closest valid key; a new key
  needs ``+key=value`` on the command line (or ``+key:`` in a file).
- A key the defaults define keeps the default's type: bool, int, float (an int is accepted),
  str, list (element types too) or mapping. ``null`` is accepted where the default is null or
  the key is in :data:`NULLABLE_KEYS`.
- A component node (a mapping whose ``name`` is a registered class) takes the constructor's
  arguments: its keys are checked against that signature instead of the defaults, and their
  types are left to the constructor (arguments are often unions such as ``str | list | dict``);
  ``null`` is accepted where the constructor's default is None. A node whose ``name`` is not
  registered (``optimizer``) is checked key by key like any other node.
- A node whose ``name`` changes (in a file or by an override) is replaced, not merged: the old
  component's arguments do not leak into the new one. If the old name is registered, the new one
  must be an entry of the same registry.
- YAML is read with a safe loader; nothing is ever evaluated as code. OmegaConf interpolations
  (``${other.key}``) are resolved once at load time, so errors surface here and not mid-run.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")
BASE_KEY = "_base_"
NEW_KEY_PREFIX = "+"

# Keys whose default is a value but that also take null (defaults.yaml documents "null = off").
NULLABLE_KEYS = frozenset({"grad_clip", "max_iterations"})
# Keys written as an int in defaults.yaml that take any real number (fractional warm-up epochs).
NUMBER_KEYS = frozenset({"optimizer.warmup_epochs"})
# A YAML document with more nodes than this (e.g. an alias bomb) is refused before it is expanded.
MAX_NODES = 100_000


class ConfigError(ValueError):
    """A config file or override is malformed; the message says what to fix."""


# --------------------------------------------------------------------------------------------
# YAML parsing
# --------------------------------------------------------------------------------------------
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
# YAML 1.2 floats: PyYAML's YAML 1.1 resolver demands a dot, so ``1e-4`` would be the string '1e-4'.
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


# libyaml's parser when PyYAML was built with it (10x faster); both construct with SafeConstructor.
_SafeBase: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _SafeLoader(_SafeBase):  # type: ignore[misc, valid-type]
    """Safe loader that reads ``1e-4`` / ``1e4`` as floats and leaves dates as strings (a run
    name such as ``2024-01-01`` must not become a ``datetime.date`` OmegaConf cannot hold)."""


_SafeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SafeLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))


class _SafeDumper(yaml.SafeDumper):
    """SafeDumper that quotes strings our loader would read as floats (the string '1e-4'),
    so that a saved config reloads identically."""


_SafeDumper.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))


def _kind(value: Any) -> str:
    """The config type name of a plain value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def _check_plain(value: Any, where: str) -> None:
    """Refuse what OmegaConf cannot hold or what a config should not contain: dates, sets,
    bytes, tuples (``!!omap``), non-string keys, recursive aliases, alias bombs."""
    budget = [MAX_NODES]

    def walk(node: Any, stack: tuple[int, ...]) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise ConfigError(f"{where}: more than {MAX_NODES} values (YAML aliases expanding?). Write the config out plainly.")
        if isinstance(node, (list, dict)):
            if id(node) in stack:
                raise ConfigError(f"{where}: a YAML alias refers to itself (recursive value). Remove the recursive '*alias'.")
            stack = (*stack, id(node))
            if isinstance(node, dict):
                for key, item in node.items():
                    if not isinstance(key, str):
                        raise ConfigError(
                            f"{where}: config keys must be strings, got {key!r} ({_kind(key)}). Quote the key or check the indentation."
                        )
                    walk(item, stack)
            else:
                for item in node:
                    walk(item, stack)
        elif not isinstance(node, (type(None), bool, int, float, str)):
            raise ConfigError(
                f"{where}: {node!r} is a {type(node).__name__}, which a config cannot hold. "
                "Use a string, number, bool, null, list or mapping (quote it to keep it as text)."
            )

    walk(value, ())


def parse_value(text: str, where: str = "value") -> Any:
    """Parse one override value the way YAML types it; never ``eval``."""
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected the value as text, got {type(text).__name__}.")
    if text.strip() == "":
        raise ConfigError(f"{where}: empty value. Write a value after '=' (use null for None, '' for an empty string).")
    try:
        value = yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - _SafeLoader is a (C)SafeLoader
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"{where}: {_short(text)} is not a valid YAML value ({problem}). "
            "Check brackets and quotes, e.g. key=[0.32,1.0] or key='a b'."
        ) from None
    except RecursionError:
        raise ConfigError(f"{where}: the value is nested too deeply. Check the brackets.") from None
    _check_plain(value, where)
    return value


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; errors name the file and what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give a YAML config file (-c/--config or {BASE_KEY}).")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}. Check the path given to -c/--config or to {BASE_KEY}.")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SafeLoader)  # noqa: S506
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        lines = str(err).splitlines() or [type(err).__name__]
        raise ConfigError(f"{path} is not valid YAML: {' '.join(line.strip() for line in lines[:4])}") from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to be a config.") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping (key: value lines), got {_kind(data)}.")
    _check_plain(data, str(path))
    return data


# --------------------------------------------------------------------------------------------
# components (nodes whose name is a registered class)
# --------------------------------------------------------------------------------------------
def _registries() -> tuple[Any, ...]:
    import hirl_like  # noqa: F401  (fills the registries)
    from hirl_like.registry import GLOBAL_REGISTRIES

    return GLOBAL_REGISTRIES


def _owners(name: Any) -> list[Any]:
    """The global registries holding ``name``."""
    if not isinstance(name, str):
        return []
    return [reg for reg in _registries() if name in reg]


def _component(node: Any) -> Any | None:
    """The constructor a component node builds, or None (no name, or a name no registry holds)."""
    if not isinstance(node, Mapping):
        return None
    owners = _owners(node.get("name"))
    return owners[0].get(node["name"]) if len(owners) == 1 else None


def _same_component(old: Any, new: Any) -> bool:
    """True when ``new`` names the same thing as ``old`` (equal, or an alias of the same entry)."""
    if old == new:
        return True
    if not isinstance(new, str):
        return False
    return any(new in reg and reg.get(new) is reg.get(old) for reg in _owners(old))


def _check_new_name(full: str, old: Any, new: Any, source: str) -> None:
    """A replacing component's name must be a string, and an entry of the old one's registry."""
    if not isinstance(new, str) or not new:
        raise ConfigError(f"{source}: {full}.name must be a non-empty string naming a component, got {new!r}.")
    owners = _owners(old)
    if len(owners) == 1 and new not in owners[0]:
        try:
            owners[0].get(new)
        except KeyError as err:  # RegistryError: lists the available names and the closest match
            raise ConfigError(f"{source}: {full}.name: {err}") from None


def _accepts_none(component: Any, key: str) -> bool:
    """Whether a component's argument may be null: its default is None, or it cannot be told."""
    if component is None:
        return True
    try:
        param = inspect.signature(component).parameters.get(key)
    except (TypeError, ValueError):
        return True
    return param is None or param.default is None


_SIMPLE_KINDS = {
    "int": {"int"}, "float": {"float", "int"}, "bool": {"bool"}, "str": {"str"}, "None": {"null"}, "NoneType": {"null"},
    "Path": {"str"}, "PathLike": {"str"},
    "list": {"list"}, "List": {"list"}, "tuple": {"list"}, "Tuple": {"list"}, "Sequence": {"list"},
    "MutableSequence": {"list"}, "Iterable": {"list"},
    "dict": {"mapping"}, "Dict": {"mapping"}, "Mapping": {"mapping"}, "MutableMapping": {"mapping"}, "DictConfig": {"mapping"},
}


def _split_top(text: str, sep: str) -> list[str]:
    """Split ``text`` at ``sep`` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _annotation_kinds(annotation: Any) -> tuple[set[str], set[str] | None] | None:
    """(value kinds, element kinds of a ``Sequence[T]``) an annotation allows, or None when it
    cannot be told (Any, a class, Literal, ...): then nothing is checked. The annotation is read
    as text; it is never evaluated."""
    if annotation is inspect.Parameter.empty:
        return None
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    kinds: set[str] = set()
    elements: set[str] | None = None
    for part in _split_top(text.replace(" ", ""), "|"):
        head, _, inner = part.partition("[")
        head = head.rsplit(".", 1)[-1]
        inner = inner[:-1] if inner.endswith("]") else inner
        if head in ("Optional", "Union"):
            sub = [_annotation_kinds(p) for p in _split_top(inner, ",")]
            if any(s is None for s in sub):
                return None
            kinds |= {"null"} if head == "Optional" else set()
            for s in sub:
                kinds |= s[0]  # type: ignore[index]
            continue
        if head not in _SIMPLE_KINDS:
            return None
        kinds |= _SIMPLE_KINDS[head]
        if head in ("Sequence", "list", "List") and inner in ("int", "float", "bool", "str"):
            elements = _SIMPLE_KINDS[inner]
    return kinds, elements


def _check_argument_types(obj: Any, args: Mapping[str, Any], context: str) -> None:
    """Each argument's value against the constructor's annotation (simple types only)."""
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return
    for key, value in args.items():
        param = params.get(key)
        if param is None:
            continue
        allowed = _annotation_kinds(param.annotation)
        if allowed is None:
            continue
        kinds, elements = allowed
        if param.default is None:
            kinds = kinds | {"null"}
        text = param.annotation if isinstance(param.annotation, str) else inspect.formatannotation(param.annotation)
        ok = _kind(value) in kinds
        if ok and elements is not None and isinstance(value, list):
            ok = all(_kind(v) in elements for v in value)
        if not ok:
            raise ConfigError(f"{context}: argument {key!r} expects {text}, got {_kind(value)} {_short(value)}.")


# --------------------------------------------------------------------------------------------
# merging with strict keys and types
# --------------------------------------------------------------------------------------------
def _suggest(key: str, candidates: Iterable[str]) -> str:
    matches = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


def _unknown_key(path: str, key: str, node: Mapping[str, Any], source: str) -> ConfigError:
    full = f"{path}.{key}" if path else key
    valid = sorted(str(k) for k in node)
    return ConfigError(
        f"{source}: unknown config key {full!r}.{_suggest(key, valid)} "
        f"Valid keys{' under ' + repr(path) if path else ''}: {', '.join(valid) or '(none)'}. "
        f"To add a new key, write +{full}=VALUE."
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _compatible(expected: Any, value: Any) -> bool:
    want, got = _kind(expected), _kind(value)
    if want == got:
        if want == "list" and expected and value:
            kinds = {_kind(v) for v in expected}
            if len(kinds) == 1 and kinds <= {"bool", "int", "float", "str"}:  # a homogeneous list: check elements
                return all(_compatible(expected[0], v) for v in value)
        return True
    return want == "float" and got == "int"


def _check_value(full: str, current: Any, value: Any, source: str, in_component: bool, component: Any) -> None:
    """Raise ConfigError when ``value`` may not replace ``current`` at ``full``."""
    key = full.rsplit(".", 1)[-1]
    if isinstance(current, Mapping) and not isinstance(value, Mapping):
        if value is None and (full in NULLABLE_KEYS or (in_component and _accepts_none(component, key))):
            return
        raise ConfigError(
            f"{source}: {full} is a mapping (keys: {', '.join(map(str, current)) or 'none'}), got {_kind(value)} "
            f"{_short(value)}. Set its keys with {full}.KEY=VALUE, or give a mapping: {full}={{KEY: VALUE}}."
        )
    if in_component or current is None:
        return  # a constructor argument's type is the constructor's business; null defaults take anything
    if value is None:
        if full in NULLABLE_KEYS:
            return
        raise ConfigError(
            f"{source}: {full} cannot be null; it expects {_kind(current)} (currently {_short(current)}). "
            f"Give a value of that type."
        )
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{source}: {full} cannot be nan. Give a number.")
    if full in NUMBER_KEYS and _kind(value) in ("int", "float"):
        return
    if not _compatible(current, value):
        want = _kind(current)
        if want == "list" and _kind(value) == "list":
            want = f"a list of {_kind(current[0])}"
        raise ConfigError(
            f"{source}: {full} expects {want} (currently {_short(current)}), got {_kind(value)} {_short(value)}. "
            + ("Quote the value to make it a string, e.g. key='1'." if want == "str" else "Give a value of that type.")
        )


def merge_strict(
    base: dict[str, Any],
    update: Mapping[str, Any],
    source: str,
    path: str = "",
    in_component: bool = False,
    *,
    free_paths: frozenset[str] | set[str] = frozenset(),
) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``.

    Keys starting with '+' may be new; other keys must exist in ``base`` and keep its type (see
    the module docstring), except inside a component node (a mapping whose ``name`` is
    registered) or a node at one of ``free_paths``, whose keys are checked against the
    constructor by :func:`validate_components`. A mapping whose ``name`` differs from the base
    node's ``name`` replaces the node.
    """
    out = copy.deepcopy(base)
    component = _component(out)
    in_component = in_component or component is not None or path in free_paths
    for raw_key, value in update.items():
        if not isinstance(raw_key, str):
            raise ConfigError(f"{source}: config keys must be strings, got {raw_key!r} under {path or 'the top level'}.")
        allow_new = raw_key.startswith(NEW_KEY_PREFIX)
        key = raw_key[1:] if allow_new else raw_key
        full = f"{path}.{key}" if path else key
        if key == BASE_KEY:
            raise ConfigError(f"{source}: {BASE_KEY} is only allowed at the top level of a config file (found at {full}).")
        if key not in out:
            if not allow_new and not in_component:
                raise _unknown_key(path, key, out, source)
            out[key] = _strip_plus(value)
            continue
        current = out[key]
        _check_value(full, current, value, source, in_component, component)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            if "name" in current and "name" in value and not _same_component(current["name"], value["name"]):
                _check_new_name(full, current["name"], value["name"], source)
                out[key] = _strip_plus(value)  # a different component: replace, do not merge
            else:
                out[key] = merge_strict(dict(current), value, source, full, in_component, free_paths=free_paths)
        else:
            out[key] = _strip_plus(value)
    return out


def _strip_plus(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {(k[1:] if isinstance(k, str) and k.startswith(NEW_KEY_PREFIX) else k): _strip_plus(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_plus(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# files with _base_
# --------------------------------------------------------------------------------------------
def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """[(file, mapping)] from the deepest base to ``path`` itself."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{BASE_KEY} cycle: {' -> '.join(str(p) for p in (*seen, path))}. Remove one of these {BASE_KEY} entries.")
    data = read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    chain: list[tuple[Path, dict[str, Any]]] = []
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
            raise ConfigError(f"{path}: {BASE_KEY} must be a file path or a list of paths, got {bases!r}.")
        for base in bases:
            base_path = (path.parent / base) if not os.path.isabs(base) else Path(base)
            if not base_path.is_file():
                raise ConfigError(
                    f"{path}: {BASE_KEY} file not found: {base} (looked for {base_path}). "
                    "Paths are relative to the file that names them."
                )
            chain.extend(_load_chain(base_path, (*seen, path)))
    chain.append((path, data))
    return chain


_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


def split_override(item: str) -> tuple[str, str]:
    """'a.b=v' -> ('a.b', 'v'); validates the key's shape."""
    if not isinstance(item, str):
        raise ConfigError(f"override {item!r} is not text. Write key=value, e.g. optimizer.lr=1e-3.")
    if "=" not in item:
        raise ConfigError(f"override {item!r} has no '='. Write key=value, e.g. optimizer.lr=1e-3.")
    key, value = item.split("=", 1)
    bare = key[1:] if key.startswith(NEW_KEY_PREFIX) else key
    if not _KEY_RE.fullmatch(bare):
        raise ConfigError(
            f"override {item!r}: {key!r} is not a valid key. Use dotted names of letters, digits and '_', "
            "e.g. optimizer.lr=1e-3 or +new_key=1."
        )
    return key, value


def _dotted_to_nested(key: str, value: Any) -> dict[str, Any]:
    """'+a.b.c' -> {'a': {'b': {'+c': value}}} (only the last part may be new)."""
    allow_new = key.startswith(NEW_KEY_PREFIX)
    parts = (key[1:] if allow_new else key).split(".")
    if allow_new:
        parts[-1] = NEW_KEY_PREFIX + parts[-1]
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return nested


def apply_overrides(cfg: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides in order. ``x.name=Other`` replaces node ``x`` with
    ``{name: Other}``, so the next overrides fill in the new component's arguments."""
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of key=value strings, got the single string {overrides!r}.")
    cfg = copy.deepcopy(cfg)  # the name branch below edits in place; never the caller's dict
    free: set[str] = set()  # nodes replaced by a name change: their keys are the new component's
    for item in overrides:
        key, text = split_override(item)
        value = parse_value(text, where=f"override {key}")
        source = f"override {item!r}"
        parts = key.removeprefix(NEW_KEY_PREFIX).split(".")
        parent = _walk(cfg, parts[:-1], source, parts[-1])
        if parts[-1] == "name" and isinstance(parent, dict) and "name" in parent:
            if not _same_component(parent["name"], value):
                node_path = ".".join(parts[:-1])
                _check_new_name(node_path, parent["name"], value, source)
                grand = _walk(cfg, parts[:-2], source, parts[-2])
                assert grand is not None  # parent exists, so its parent does
                grand[parts[-2]] = {"name": value}
                free.add(node_path)
                continue
        cfg = merge_strict(cfg, _dotted_to_nested(key, value), source=source, free_paths=free)
    return cfg


def _walk(cfg: dict[str, Any], parts: list[str], source: str, next_key: str) -> dict[str, Any] | None:
    """The mapping at ``parts`` (None where the path does not exist yet, e.g. a new argument node
    of a component); a value on the way that is not a mapping is an error (``optimizer.lr.x=1``)."""
    node: Any = cfg
    for i, part in enumerate(parts):
        if part not in node:
            return None
        node = node[part]
        if not isinstance(node, dict):
            where = ".".join(parts[: i + 1])
            below = parts[i + 1] if i + 1 < len(parts) else next_key
            raise ConfigError(
                f"{source}: {where} is {_kind(node)} {_short(node)}, not a mapping, so it has no key {below!r}. "
                f"Set it as a whole, e.g. {where}=VALUE."
            )
    return node


# --------------------------------------------------------------------------------------------
# component nodes: keys are constructor arguments
# --------------------------------------------------------------------------------------------
def validate_components(cfg: Mapping[str, Any], path: str = "") -> None:
    """Check every component node's keys against its registered constructor.

    A mapping with a string ``name`` found in exactly one global registry is checked with
    :func:`hirl_like.registry.check_arguments`; a class may add checks for its ``**kwargs``
    through a ``validate_config(node, path)`` static/class method. Names found in no registry
    are left to the build step (which reports them with the available names).
    """
    from hirl_like.registry import RegistryError, check_arguments

    name = cfg.get("name")
    owners = _owners(name)
    if len(owners) == 1:
        obj = owners[0].get(name)
        args = {k: v for k, v in cfg.items() if k != "name"}
        try:
            context = f"config node {path or '(top)'} ({owners[0].name} {name!r})"
            check_arguments(obj, args, context=context)
            _check_argument_types(obj, args, context)
            hook = getattr(obj, "validate_config", None)
            if callable(hook):
                hook(args, path)
        except (RegistryError, ValueError, TypeError) as err:
            raise ConfigError(str(err)) from None
    for key, value in cfg.items():
        if isinstance(value, Mapping):
            validate_components(value, f"{path}.{key}" if path else str(key))


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def load_config(
    path: str | os.PathLike[str] | None,
    overrides: Sequence[str] = (),
    defaults: str | os.PathLike[str] | None = DEFAULTS_FILE,
) -> DictConfig:
    """Defaults <- _base_ chain <- file <- overrides; returns a read-only-structure DictConfig.

    ``defaults=None``: no package defaults; the deepest file of the ``_base_`` chain is taken as
    it is and defines the keys (and types) the files above it and the overrides may set.

    Every malformed input raises :class:`ConfigError` with a one-line message saying what to fix.
    """
    # Without defaults, the deepest file of the chain defines the keys the others may set.
    cfg: dict[str, Any] | None = read_yaml(defaults) if defaults is not None else None
    if path is not None:
        for file, data in _load_chain(Path(path)):
            cfg = _strip_plus(data) if cfg is None else merge_strict(cfg, data, source=str(file))
    cfg = apply_overrides(cfg or {}, list(overrides) if not isinstance(overrides, str) else overrides)
    validate_components(cfg)
    try:
        conf = OmegaConf.create(cfg)
        OmegaConf.resolve(conf)  # interpolation errors surface now, not in the middle of a run
    except OmegaConfBaseException as err:
        raise ConfigError(f"config value cannot be used: {' '.join(str(err).split())}") from None
    OmegaConf.set_struct(conf, True)  # later typos in code fail loudly too
    return conf


def to_dict(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return copy.deepcopy(dict(cfg))


def _mark_new_keys(node: Mapping[str, Any], base: Any, in_component: bool = False) -> dict[str, Any]:
    """Prefix with '+' the keys :func:`merge_strict` would refuse as new when ``node`` is loaded
    over ``base``, so that a dumped config loads again (mirrors merge_strict's rules)."""
    base = base if isinstance(base, Mapping) else {}
    in_component = in_component or _component(base) is not None
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in base:
            out[key if in_component else NEW_KEY_PREFIX + key] = value
            continue
        current = base[key]
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            replaced = "name" in current and "name" in value and not _same_component(current["name"], value["name"])
            out[key] = dict(value) if replaced else _mark_new_keys(value, current, in_component)
        else:
            out[key] = value
    return out


def dump_config(cfg: DictConfig | Mapping[str, Any], *, defaults: str | os.PathLike[str] | None = DEFAULTS_FILE) -> str:
    """The resolved config as YAML that :func:`load_config` reads back to the same config
    (keys the defaults lack are written ``+key`` where loading needs it).

    One corner case does not round-trip: a component node replaced (by a name change) with a
    node of the same name as the defaults' node at that place is merged with the defaults'
    arguments when reloaded (e.g. ``transform.name=MultiCropTransform`` over a file that had
    changed it away from the defaults' MultiCropTransform).
    """
    data = to_dict(cfg)
    if defaults is not None:
        data = _mark_new_keys(data, read_yaml(defaults))
    return yaml.dump(data, Dumper=_SafeDumper, sort_keys=False, default_flow_style=None, allow_unicode=True)


def save_config(cfg: DictConfig | Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the resolved config atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dump_config(cfg), encoding="utf-8")
    os.replace(tmp, path)
