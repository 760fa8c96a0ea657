"""YAML text -> plain values, with nothing evaluated and nothing a config cannot hold.

A (C)SafeLoader (no Python tags) that reads YAML 1.2 floats (PyYAML's 1.1 resolver reads ``1e-4`` as
text), keeps dates as text (OmegaConf cannot hold a date) and refuses a key written twice in one
mapping (PyYAML keeps the last one silently). :func:`parse` then refuses what survives the loader but
not a config: sets, bytes, non-string keys, recursive aliases and alias bombs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from hirl_like.config.errors import ConfigError, kind, short

MAX_NODES = 100_000  # more values than this (an alias bomb) are refused before OmegaConf copies each one
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader with the three changes of the module docstring."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, str], yaml.Node] = {}
        for key_node, _ in node.value:  # before '<<' merges are flattened: a key may override a merged one
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                if (key_node.tag, key_node.value) in seen:
                    first = seen[(key_node.tag, key_node.value)].start_mark.line + 1
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {short(key_node.value)} (first given on line {first}); "
                        "write each key once per mapping", key_node.start_mark)
                seen[(key_node.tag, key_node.value)] = key_node
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {c: [(tag, rx) for tag, rx in resolvers if not tag.endswith(":timestamp")]
                                   for c, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(\d[\d_]*\.[\d_]*([eE][-+]?\d+)?|\d[\d_]*[eE][-+]?\d+|\.[\d_]+([eE][-+]?\d+)?|\.(inf|Inf|INF))$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."))


def parse(text: str, where: str) -> Any:
    """YAML text -> plain values (dict, list, str, int, float, bool, None), or :class:`ConfigError`."""
    try:
        value = yaml.load(text, Loader=_Loader)  # noqa: S506 - a (C)SafeLoader
    except (yaml.YAMLError, RecursionError) as err:
        lines = str(err).splitlines() or ["nested too deeply"]
        raise ConfigError(f"{where} is not valid YAML: {' '.join(line.strip() for line in lines[:4])}") from None
    except ValueError as err:  # an int of more than 4300 digits (Python's int-from-text limit)
        raise ConfigError(f"{where}: a number too long to read ({err}).") from None
    todo, count = [(value, ())], 0
    while todo:
        node, ancestors = todo.pop()
        if (count := count + 1) > MAX_NODES:
            raise ConfigError(f"{where}: more than {MAX_NODES} values (YAML aliases expanding?). Write it out plainly.")
        if id(node) in ancestors:
            raise ConfigError(f"{where}: a YAML alias refers to itself (recursive value). Remove the recursive '*alias'.")
        if isinstance(node, dict) and (bad := [key for key in node if not isinstance(key, str)]):
            raise ConfigError(f"{where}: config keys must be strings, got {short(bad[0])} ({kind(bad[0])}). Quote the key.")
        if isinstance(node, (dict, list)):
            todo += [(item, (*ancestors, id(node))) for item in (node.values() if isinstance(node, dict) else node)]
        elif not isinstance(node, (type(None), bool, int, float, str)):
            raise ConfigError(f"{where}: {short(node)} is a {type(node).__name__}, which a config cannot hold. "
                              "Use a string, number, bool, null, list or mapping (quote it to keep it as text).")
    return value


def parse_value(text: str, where: str = "value") -> Any:
    """One override value, typed as YAML types it; never ``eval``."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: empty value {short(text)}. Write a value after '=' (null for None, '' for an empty string).")
    return parse(text, where)


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML mapping read with the safe loader; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (or not a file). Check the path given to -c/--config or _base_.")
    try:
        data = parse(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not valid YAML: not UTF-8 text ({err.reason} at byte {err.start}).") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}.") from None
    if not isinstance(data, (dict, type(None))):
        raise ConfigError(f"{path} must hold a YAML mapping (key: value lines), got {kind(data)}.")
    return data or {}
