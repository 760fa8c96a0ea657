"""Downstream configs: ``tools/train.py -c configs/downstream/<dataset>/<protocol>/<method>/X.yaml pretrained=PATH``.

HIRL runs its downstream protocols through the training entry point with a config per data set,
protocol and method; here such a file names the protocol, and ``tools/train.py`` hands it to that
protocol's script (``eval_common/eval_<script>.py``), the same code path as calling the script::

    protocol: finetune            # finetune | semisup | linear | knn | clustering | segmentation
    pretrained: null              # the export to start from; usually given as pretrained=PATH
    arguments: {epochs: 30}       # the script's flags (--epochs 30); true = a bare flag
    overrides: [data.name=FashionMNIST]   # key=value overrides of the pre-training config (the data)

On the command line ``pretrained=PATH``, ``protocol=...`` and ``arguments.<flag>=VALUE`` set those
keys; every other ``key=value`` is appended to ``overrides`` (e.g. ``data.limit=1000``). ``semisup``
is ``finetune`` with ``arguments.label_fraction`` required. The protocol script parses the flags,
so a misspelt flag is refused by the script's own parser, naming it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hirl_like.config.errors import ConfigError, cut
from hirl_like.config.loading import split_override
from hirl_like.config.safe_yaml import parse

# protocol -> the CLI module whose main() runs it (eval_common/eval_<name>.py calls the same main)
PROTOCOLS: dict[str, str] = {
    "finetune": "hirl_like.cli.eval_finetune",
    "semisup": "hirl_like.cli.eval_finetune",
    "linear": "hirl_like.cli.eval_linear",
    "knn": "hirl_like.cli.eval_knn",
    "clustering": "hirl_like.cli.eval_clustering",
    "segmentation": "hirl_like.cli.eval_segmentation",
}
KEYS = ("protocol", "pretrained", "arguments", "overrides")


def read_mapping(path: str | Path) -> dict[str, Any]:
    """The YAML file as a mapping (duplicate keys refused by the safe loader), or ConfigError."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    data = parse(file.read_text(encoding="utf-8"), str(file))
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: a config is a mapping of keys, got {type(data).__name__}.")
    return data


def is_downstream_config(path: str | Path) -> bool:
    """True for a file with a top-level ``protocol`` key (a pre-training config has none)."""
    file = Path(path)
    return file.is_file() and "protocol" in read_mapping(file)


def _flag_words(name: str, value: Any) -> list[str]:
    """``arguments`` entry -> argv words: true -> ``--name``; false / null -> nothing; a list -> ``--name a b``."""
    flag = f"--{name}"
    if value is True:
        return [flag]
    if value is False or value is None:
        return []
    if isinstance(value, list):
        return [flag, *(str(v) for v in value)]
    if isinstance(value, dict):
        raise ConfigError(f"arguments.{name}: a flag takes a value or a list, not a mapping ({cut(str(value))}).")
    return [flag, str(value)]


def _apply_command_line(spec: dict[str, Any], items: Sequence[str]) -> None:
    """``pretrained=`` / ``protocol=`` / ``arguments.<flag>=`` set those keys; the rest go to overrides."""
    for item in items:
        key, text = split_override(item)
        value = parse(text, f"override {cut(item)}") if text else None
        if key in ("pretrained", "protocol"):
            spec[key] = value
        elif key.startswith("arguments."):
            spec["arguments"][key.split(".", 1)[1]] = value
        elif key in ("arguments", "overrides"):
            raise ConfigError(f"{key} cannot be replaced whole on the command line; give arguments.<flag>=VALUE "
                              "or the override itself (e.g. data.limit=1000).")
        else:
            spec["overrides"].append(item)


def downstream_command(path: str | Path, items: Sequence[str] = ()) -> tuple[Callable[[Sequence[str]], int], list[str]]:
    """(the protocol script's ``main``, its argv) for a downstream config and command-line items."""
    data = read_mapping(path)
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} in a downstream config; its keys are {', '.join(KEYS)}.")
    spec = {"protocol": data.get("protocol"), "pretrained": data.get("pretrained"),
            "arguments": dict(data.get("arguments") or {}), "overrides": list(data.get("overrides") or [])}
    _apply_command_line(spec, items)
    protocol = spec["protocol"]
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{path}: protocol {cut(str(protocol))!r} is not one of {', '.join(PROTOCOLS)}.")
    if not spec["pretrained"]:
        raise ConfigError(f"{path}: no export to start from; add pretrained=PATH (e.g. "
                          "output/<run>/main_vit_checkpoint.pth) to the command.")
    if protocol == "semisup" and spec["arguments"].get("label_fraction") is None:
        raise ConfigError(f"{path}: protocol semisup needs arguments.label_fraction (e.g. 0.01 or 0.1).")
    argv = ["--pretrained", str(spec["pretrained"])]
    for name, value in spec["arguments"].items():
        argv += _flag_words(str(name), value)
    argv += [str(o) for o in spec["overrides"]]
    main = importlib.import_module(PROTOCOLS[protocol]).main
    return main, argv
