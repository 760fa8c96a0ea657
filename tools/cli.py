"""Shared command-line handling for tools: ``-c FILE [key=value ...]`` and clean one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import _bootstrap  # noqa: F401

from hirl_like.config import ConfigError
from hirl_like.registry import RegistryError


def config_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("-c", "--config", required=True, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (nested keys by dots, +key=value adds a key)")
    return parser


def run_cleanly(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run ``main``; a config or input error ends with one line on stderr and exit code 2."""
    try:
        code = main(argv)
    except (ConfigError, RegistryError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
