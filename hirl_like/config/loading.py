"""Loading: ``defaults.yaml`` <- ``_base_`` chain (base first) <- file <- ``key=value`` overrides.

They are merged in that order, key by key, into one DictConfig in struct mode (DINOv2 style). Values
keep YAML types and are never evaluated. Struct mode refuses a key the config lacks (``+key=value``
adds one); a key keeps its value's type. A component node (a mapping whose ``name`` is registered)
leaves struct mode: its keys are the constructor's arguments, checked once all is merged. A node
whose ``name`` changes is replaced, not merged (unless the new component subclasses the old one, as
``hirl`` extends ``Composed``): what files gave it is dropped, but keys that earlier
overrides gave it explicitly are carried to the new component, or refused when it does not take
them (never lost without a word). Interpolations are resolved at load time, then the whole config
goes through the validation pass (:mod:`hirl_like.config.validation`).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections import abc
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from hirl_like.config.components import owners, registered, renames, validate_components
from hirl_like.config.errors import ConfigError, cut, kind, short
from hirl_like.config.rules import CLOSED_NODES
from hirl_like.config.safe_yaml import parse_value, read_yaml
from hirl_like.config.typing_check import check_value_type
from hirl_like.config.validation import validate
from hirl_like.registry import RegistryError, accepted_parameters

DEFAULTS_FILE = Path(__file__).resolve().parents[1] / "defaults.yaml"
BASE_KEY = "_base_"
_KEY_RE = re.compile(r"\+?[A-Za-z_]\w*(\.\w+)*", re.ASCII)


class _Path(dict):  # type: ignore[type-arg]
    """The mapping an override's dotted key stands for (``a.b=1``: ``{a: _Path({b: 1})}``): unlike a
    mapping value, it may only go through mappings, never replace a value."""


class _Trace:
    """Where each value came from (a file, an override), and which values overrides gave explicitly."""

    def __init__(self, default: str) -> None:
        self.default = default
        self.sources: dict[str, str] = {}
        self.explicit: dict[str, tuple[Any, str]] = {}  # path -> (value, source), in override order

    def record(self, path: str, source: str, value: Any, explicit: bool) -> None:
        self.forget(path)
        self.sources[path] = source
        if explicit:
            self.explicit[path] = (value, source)

    def forget(self, path: str) -> dict[str, tuple[Any, str]]:
        """Drop what is recorded below ``path`` (its value is replaced); the explicit entries, by relative path."""
        prefix = path + "."
        for key in [k for k in self.sources if k.startswith(prefix)]:
            del self.sources[key]
        gone = {key[len(prefix):]: self.explicit.pop(key) for key in [k for k in self.explicit if k.startswith(prefix)]}
        self.explicit.pop(path, None)
        return gone

    def source(self, path: str) -> str:
        path = path.split("[")[0]  # a list item: its list's source
        while path and path not in self.sources:
            path = path.rpartition(".")[0]
        return self.sources.get(path, self.default)


def _raw(node: DictConfig) -> dict[str, Any]:
    """``node``'s children as written: nothing is resolved (an interpolation stays its text)."""
    return dict(node.items_ex(resolve=False))  # type: ignore[arg-type]


def _component(node: abc.Mapping[str, Any] | DictConfig) -> Any | None:
    found = registered(_raw(node) if isinstance(node, DictConfig) else node)
    return found[2] if found else None


def _replaces(new: abc.Mapping[str, Any], old: DictConfig) -> bool:
    """Whether mapping ``new`` names another component than node ``old`` (a _Path: a key below 'name')."""
    return "name" in old and "name" in new and not isinstance(new["name"], _Path) and renames(_raw(old)["name"], new["name"])


def _strip_plus(value: Any) -> Any:
    """A value set as a whole: its ``+key`` marks are not needed (every key in it is new)."""
    if isinstance(value, abc.Mapping):
        return {k.removeprefix("+"): _strip_plus(v) for k, v in value.items()}
    return [_strip_plus(v) for v in value] if isinstance(value, list) else value


def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """[(file, mapping)] from the deepest ``_base_`` to ``path`` itself; bases are relative to the file."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{BASE_KEY} cycle: {' -> '.join(map(str, (*seen, path)))}. Remove one of these {BASE_KEY} entries.")
    data = read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    bases = [] if bases is None else [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY} must be a file path or a list of paths, got {short(bases)}.")
    chain = []
    for base in bases:
        if not (path.parent / base).is_file():  # an absolute base stays absolute
            raise ConfigError(f"{path}: {BASE_KEY} file not found: {base} (looked for {path.parent / base}).")
        chain += _load_chain(path.parent / base, (*seen, path))
    return [*chain, (path, data)]


def _carry(node: DictConfig, carried: dict[str, tuple[Any, str]], path: str, source: str, trace: _Trace) -> None:
    """Give the new component at ``path`` the keys earlier overrides set on the node it replaces."""
    new, obj = _raw(node)["name"], _component(node)
    names, any_key = accepted_parameters(obj) if obj is not None else ([], True)
    for rel, (value, given) in carried.items():
        if rel == "name":
            continue
        if "." in rel:  # the new node starts with its name alone: there is no node below to set a key in
            raise ConfigError(f"{source}: {path}.{cut(rel)}={short(value)} (from {given}) cannot be kept: "
                              f"{path}.name={new!r} starts a new node without {rel.split('.')[0]!r}. Set {path}.name first.")
        if not any_key and rel not in names:
            raise ConfigError(f"{source}: {path}.{cut(rel)}={short(value)} (from {given}) is not an argument of "
                              f"{new!r}, which replaces the node; it accepts: {', '.join(names) or '(none)'}. "
                              f"Remove it, or set {path}.name before it.")
        _merge(node, {rel: value}, given, trace, explicit=True, path=path)


def _merge(node: DictConfig, data: abc.Mapping[str, Any], source: str, trace: _Trace, explicit: bool, path: str = "") -> None:
    """Merge plain ``data`` into ``node`` in place, key by key: a mapping onto a mapping merges (or
    replaces it when its ``name`` names another component); any other value is type-checked and
    set, struct mode refusing a new key unless it is written ``+key``."""
    if _component(node) is not None:
        OmegaConf.set_struct(node, False)  # a component's keys are its constructor's arguments, checked later
    children = _raw(node)
    for written, value in data.items():
        plus, key = written.startswith("+"), written.removeprefix("+")
        full, child = f"{path}.{key}" if path else key, children.get(key)
        if key == BASE_KEY:  # else it would read as an unknown key, with a misleading '+_base_' hint
            raise ConfigError(f"{source}: {BASE_KEY} is only allowed at the top level of a config file (found at {full}).")
        if isinstance(value, _Path) and key in children and not isinstance(child, DictConfig):
            raise ConfigError(f"{source}: {cut(full)} is {kind(child)} {short(child)}, not a mapping, so it has no key "
                              f"{short(next(iter(value)).lstrip('+'))}. Set it as a whole, e.g. {cut(full)}=VALUE.")
        if isinstance(value, abc.Mapping) and isinstance(child, DictConfig):
            if _replaces(value, child):
                if not isinstance(new := value["name"], str) or not new:
                    raise ConfigError(f"{source}: {full}.name must be a non-empty string naming a component, got {short(new)}.")
                if len(regs := owners(_raw(child)["name"])) == 1 and new not in regs[0]:  # the same registry only
                    try:
                        regs[0].get(new)
                    except RegistryError as err:  # lists the available names and the closest one
                        raise ConfigError(f"{source}: {full}.name: {str(err).replace(repr(new), short(new))}") from None
                carried = trace.forget(full) if explicit else {}
                node[key] = {"name": new}  # another component: its node is replaced, not merged
                OmegaConf.set_struct(node[key], False)
                trace.record(full, source, None, explicit=False)
                trace.record(f"{full}.name", source, new, explicit)
                _carry(node[key], carried, full, source, trace)
                value = {k: v for k, v in value.items() if k != "name"}
            _merge(node[key], value, source, trace, explicit, full)
            continue
        if isinstance(value, bool) and isinstance(child, DictConfig) and "enabled" in child:
            value = {"enabled": value}  # a switch node: resume=false means resume.enabled=false
            _merge(node[key], value, source, trace, explicit, full)
            continue
        if key in children:
            check_value_type(child, value, full, source, free=not OmegaConf.is_struct(node))
        try:
            with open_dict(node) if plus else contextlib.nullcontext():
                node[key] = _strip_plus(value)
        except (ConfigKeyError, ConfigAttributeError):  # struct mode: a key the config lacks
            close = difflib.get_close_matches(key, valid := sorted(children), n=3, cutoff=0.5)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            add = "" if path in CLOSED_NODES else f" To add a new key, write +{cut(full)}=VALUE."  # + is refused there too
            raise ConfigError(f"{source}: unknown config key {short(full)}.{hint} Valid keys{' under ' + repr(path) if path else ''}: "
                              f"{', '.join(valid) or '(none)'}.{add}") from None
        except OmegaConfBaseException as err:
            raise ConfigError(f"{source}: {cut(full)}: {' '.join(str(err).split())}") from None
        trace.record(full, source, _strip_plus(value), explicit)


def split_override(item: str) -> tuple[str, str]:
    """``'a.b=v'`` -> ``('a.b', 'v')``; checks the key's shape."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"override {short(item)} has no '='. Write key=value, e.g. optimizer.lr=1e-3.")
    key, value = item.split("=", 1)
    if not _KEY_RE.fullmatch(key):
        raise ConfigError(f"override {short(item)}: {short(key)} is not a valid key. Use dotted names of letters, digits "
                          "and '_', e.g. optimizer.lr=1e-3 or +new_key=1.")
    return key, value


def _apply_overrides(cfg: DictConfig, overrides: abc.Sequence[str], trace: _Trace) -> None:
    """Apply ``key=value`` overrides to ``cfg`` in place, in order: ``+a.b=v`` merges ``{a: {+b: v}}``
    (only the last key may be new)."""
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of key=value strings, got the single string {short(overrides)}.")
    for item in overrides:
        key, text = split_override(item)
        *parents, last = key.removeprefix("+").split(".")
        nested = {("+" if key.startswith("+") else "") + last: parse_value(text, where=f"override {short(key)}")}
        for part in reversed(parents):
            nested = {part: _Path(nested)}
        _merge(cfg, nested, f"override {short(item)}", trace, explicit=True)


def load_config(path: str | os.PathLike[str] | None, overrides: abc.Sequence[str] = (),
                defaults: str | os.PathLike[str] | None = DEFAULTS_FILE) -> DictConfig:
    """Defaults <- ``_base_`` chain <- file <- overrides, resolved, validated, in struct mode.

    ``defaults=None``: the deepest file of the chain defines the keys (and types) the others may set.
    Every malformed input raises :class:`ConfigError` with a one-line message.
    """
    chain = [(Path(defaults), read_yaml(defaults))] if defaults is not None else []
    chain += _load_chain(Path(path)) if path is not None else []
    trace = _Trace(str(chain[0][0]) if chain else "config")
    cfg = OmegaConf.create(_strip_plus(chain[0][1]) if chain else {})
    OmegaConf.set_struct(cfg, True)
    for file, data in chain[1:]:
        _merge(cfg, data, str(file), trace, explicit=False)
    _apply_overrides(cfg, overrides, trace)
    try:
        OmegaConf.resolve(cfg)  # interpolation errors surface now, not mid-run
    except OmegaConfBaseException as err:
        raise ConfigError(f"config value cannot be used: {' '.join(str(err).split())}") from None
    plain = OmegaConf.to_container(cfg)
    validate_components(plain)  # type: ignore[arg-type]
    validate(plain, trace.source)  # type: ignore[arg-type]
    for mapping in _mappings(cfg):
        OmegaConf.set_struct(mapping, None)  # component nodes too: a typo in code that reads them fails loudly
    OmegaConf.set_struct(cfg, True)
    return cfg


def _mappings(node: DictConfig) -> abc.Iterator[DictConfig]:
    """``node`` and every mapping below it through mappings."""
    yield node
    for child in _raw(node).values():
        if isinstance(child, DictConfig):
            yield from _mappings(child)
