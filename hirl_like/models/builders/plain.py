"""Plain Python containers from config values (nested OmegaConf nodes included)."""

from __future__ import annotations

from typing import Any


def to_plain(value: Any) -> Any:
    """``value`` with every OmegaConf ``DictConfig`` / ``ListConfig`` inside it turned into a dict /
    list (a shallow ``dict(node)`` of a config leaves its nested nodes as they are; a library that
    tests ``isinstance(x, list)`` would not recognise them)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value)
    return value
