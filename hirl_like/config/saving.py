"""Writing a loaded config back out: plain dicts, YAML that loads back to the same config, atomic saves."""

from __future__ import annotations

import os
from collections import abc
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hirl_like.config.components import registered, renames
from hirl_like.config.loading import DEFAULTS_FILE
from hirl_like.config.safe_yaml import read_yaml


def to_dict(cfg: DictConfig | abc.Mapping[str, Any]) -> dict[str, Any]:
    """A plain, resolved, deep copy."""
    container = OmegaConf.to_container(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg)), resolve=True)
    return container  # type: ignore[return-value]


def mark_new_keys(node: abc.Mapping[str, Any], base: abc.Mapping[str, Any]) -> dict[str, Any]:
    """``node`` with ``+key`` where loading it over ``base`` needs one: not in a component, nor in a
    node that replaces the base's (those take any key)."""
    if registered(base) is not None:
        return dict(node)
    out = {}
    for key, value in node.items():
        old = base.get(key)
        merged = isinstance(value, abc.Mapping) and isinstance(old, abc.Mapping) \
            and not ("name" in old and "name" in value and renames(old["name"], value["name"]))
        out[key if key in base else "+" + key] = mark_new_keys(value, base[key]) if merged else value
    return out


def dump_config(cfg: DictConfig | abc.Mapping[str, Any], *, defaults: str | os.PathLike[str] | None = DEFAULTS_FILE) -> str:
    """The resolved config as YAML that :func:`load_config` reads back to the same config, except where
    a node replaced by another component's name takes the defaults' component again: reloaded, that
    node is merged with the defaults' arguments (``transform`` of configs/pretrain/slip: local_size)."""
    data = to_dict(cfg)
    return OmegaConf.to_yaml(mark_new_keys(data, read_yaml(defaults)) if defaults is not None else data)


def save_config(cfg: DictConfig | abc.Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the resolved config atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dump_config(cfg), encoding="utf-8")
    os.replace(tmp, path)
