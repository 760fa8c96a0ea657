"""What every command shares: the ``-c FILE [key=value ...]`` parser and clean one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from hirl_like.config import ConfigError
from hirl_like.registry import RegistryError

# Bad input of any of these kinds ends a command with one line on stderr and exit code 2.
INPUT_ERRORS = (ConfigError, RegistryError, FileNotFoundError, ValueError)


def config_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("-c", "--config", required=True, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (nested keys by dots, +key=value adds a key)")
    return parser


def run_cleanly(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run ``main``; a config or input error ends with one line on stderr and exit code 2."""
    try:
        code = main(argv)
    except INPUT_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def console_entry(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[], None]:
    """A zero-argument function for a ``[project.scripts]`` entry point that runs ``main`` cleanly."""

    def entry() -> None:
        run_cleanly(main)

    entry.__doc__ = main.__doc__
    return entry
