"""Configs: YAML files with ``_base_`` inheritance, typed ``key=value`` overrides, strict keys.

Order of precedence (DINOv2 style): the package defaults (``hirl_like/defaults.yaml``), then the
chain of ``_base_`` files (base first), then the file itself, then command-line overrides.

Rules:
- Values keep YAML types: ``false`` is a bool, ``1e-4`` a float, ``null`` None, ``[0.32,1.0]`` a
  list (YAML 1.2 float syntax is accepted too, unlike PyYAML's YAML 1.1 resolver).
- A key that the defaults/base do not define is an error naming the closest valid key; a new key
  needs ``+key=value`` on the command line (or ``+key:`` in a file).
- A component node (a mapping with a ``name``) takes the registered constructor's arguments:
  its keys are checked against that signature instead of the defaults.
- A node whose ``name`` changes (in a file or by an override) is replaced, not merged: the old
  component's arguments do not leak into the new one.
- YAML is read with a safe loader; nothing is ever evaluated as code.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")
BASE_KEY = "_base_"
NEW_KEY_PREFIX = "+"


class ConfigError(ValueError):
    """A config file or override is malformed; the message says what to fix."""


# --------------------------------------------------------------------------------------------
# YAML parsing
# --------------------------------------------------------------------------------------------
class _SafeLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` / ``1e4`` as floats (PyYAML's YAML 1.1 resolver
    demands a dot, so ``1e-4`` would become the string '1e-4')."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_value(text: str, where: str = "value") -> Any:
    """Parse one override value the way YAML types it; never ``eval``."""
    if text.strip() == "":
        raise ConfigError(f"{where}: empty value. Write a value after '=' (use null for None, '' for an empty string).")
    try:
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - _SafeLoader derives from SafeLoader
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"{where}: {text!r} is not a valid YAML value ({problem}). "
            "Check brackets and quotes, e.g. key=[0.32,1.0] or key='a b'."
        ) from None


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}. Check the path given to -c/--config or to {BASE_KEY}.")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SafeLoader)  # noqa: S506
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping (key: value lines), got {type(data).__name__}.")
    return data


# --------------------------------------------------------------------------------------------
# merging with strict keys
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


def merge_strict(
    base: dict[str, Any], update: Mapping[str, Any], source: str, path: str = "", in_component: bool = False
) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``.

    Keys starting with '+' may be new; other keys must exist in ``base``, except inside a
    component node (a mapping with a ``name``), whose keys are the registered constructor's
    arguments and are checked against its signature by :func:`validate_components`. A mapping
    whose ``name`` differs from the base node's ``name`` replaces the node.
    """
    out = copy.deepcopy(base)
    in_component = in_component or "name" in out
    for raw_key, value in update.items():
        if not isinstance(raw_key, str):
            raise ConfigError(f"{source}: config keys must be strings, got {raw_key!r} under {path or 'the top level'}.")
        allow_new = raw_key.startswith(NEW_KEY_PREFIX)
        key = raw_key[1:] if allow_new else raw_key
        full = f"{path}.{key}" if path else key
        if key not in out:
            if not allow_new and not in_component:
                raise _unknown_key(path, key, out, source)
            out[key] = _strip_plus(value)
            continue
        current = out[key]
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            if "name" in value and value.get("name") != current.get("name"):
                out[key] = _strip_plus(value)  # a different component: replace, do not merge
            else:
                out[key] = merge_strict(dict(current), value, source, full, in_component)
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
        raise ConfigError(f"{BASE_KEY} cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    data = read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    chain: list[tuple[Path, dict[str, Any]]] = []
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ConfigError(f"{path}: {BASE_KEY} must be a file path or a list of paths, got {bases!r}.")
        for base in bases:
            base_path = (path.parent / base) if not os.path.isabs(base) else Path(base)
            if not base_path.is_file():
                raise ConfigError(f"{path}: {BASE_KEY} file not found: {base} (looked for {base_path}).")
            chain.extend(_load_chain(base_path, (*seen, path)))
    chain.append((path, data))
    return chain


def split_override(item: str) -> tuple[str, str]:
    """'a.b=v' -> ('a.b', 'v'); validates the key's shape."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} has no '='. Write key=value, e.g. optimizer.lr=1e-3.")
    key, value = item.split("=", 1)
    bare = key[1:] if key.startswith(NEW_KEY_PREFIX) else key
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", bare):
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
    for item in overrides:
        key, text = split_override(item)
        value = parse_value(text, where=f"override {key}")
        parts = key.lstrip(NEW_KEY_PREFIX).split(".")
        if parts[-1] == "name" and len(parts) > 1:
            parent = _lookup(cfg, parts[:-1], item)
            if isinstance(parent, dict) and parent.get("name") != value:
                _lookup(cfg, parts[:-2], item)[parts[-2]] = {"name": value}
                continue
        cfg = merge_strict(cfg, _dotted_to_nested(key, value), source=f"override {item!r}")
    return cfg


def _lookup(cfg: dict[str, Any], parts: list[str], item: str) -> Any:
    """The node at ``parts``; an unknown key is an error naming the closest valid key."""
    node: Any = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise _unknown_key(".".join(parts[:i]), part, node if isinstance(node, dict) else {}, f"override {item!r}")
        node = node[part]
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
    import hirl_like  # noqa: F401  (fills the registries)
    from hirl_like.registry import GLOBAL_REGISTRIES, RegistryError, check_arguments

    name = cfg.get("name")
    if isinstance(name, str):
        owners = [reg for reg in GLOBAL_REGISTRIES if name in reg]
        if len(owners) == 1:
            obj = owners[0].get(name)
            args = {k: v for k, v in cfg.items() if k != "name"}
            try:
                check_arguments(obj, args, context=f"config node {path or '(top)'} ({owners[0].name} {name!r})")
                hook = getattr(obj, "validate_config", None)
                if callable(hook):
                    hook(args, path)
            except (RegistryError, ValueError) as err:
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
    """Defaults <- _base_ chain <- file <- overrides; returns a read-only-structure DictConfig."""
    cfg: dict[str, Any] = read_yaml(defaults) if defaults is not None else {}
    if path is not None:
        for file, data in _load_chain(Path(path)):
            cfg = merge_strict(cfg, data, source=str(file))
    cfg = apply_overrides(cfg, list(overrides))
    validate_components(cfg)
    conf = OmegaConf.create(cfg)
    OmegaConf.set_struct(conf, True)  # later typos in code fail loudly too
    return conf


def to_dict(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return copy.deepcopy(dict(cfg))


def dump_config(cfg: DictConfig | Mapping[str, Any]) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: DictConfig | Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the resolved config atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dump_config(cfg), encoding="utf-8")
    os.replace(tmp, path)
