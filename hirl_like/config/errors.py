"""The config layer's error, its one warning channel, and how values appear in their messages."""

from __future__ import annotations

import os
import reprlib
import sys
from collections import abc
from typing import Any

from omegaconf import DictConfig, ListConfig

MAX_MESSAGE = 1500  # characters: a message that lists valid keys fits; one built from a huge input is cut

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80  # a 10,000-character key or value shows as its two ends
_REPR.maxlist = _REPR.maxdict = 8
_REPR.maxlevel = 3


def short(value: Any) -> str:
    """``repr(value)`` cut to about 80 characters (the middle of long text, the tail of long lists)."""
    return _REPR.repr(value)


def kind(value: Any) -> str:
    """The YAML-level kind of a value for messages: mapping, list, null, int, str, ..."""
    if isinstance(value, (abc.Mapping, DictConfig)):
        return "mapping"
    if isinstance(value, (list, ListConfig)):
        return "list"
    return "null" if value is None else type(value).__name__


class ConfigError(ValueError):
    """A config file or override is malformed; the one-line message says what to fix.

    The message is forced onto one line and cut to :data:`MAX_MESSAGE` characters, so that no input
    (a 10,000-character key, a YAML error quoting a long line) can flood a terminal or a log.
    """

    def __init__(self, message: str) -> None:
        text = " ".join(str(message).split())
        if len(text) > MAX_MESSAGE:
            text = f"{text[: MAX_MESSAGE - 120]} [...] {text[-100:]}"
        super().__init__(text)


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr, from the first process only (every rank loads the config)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


def cut(text: str, limit: int = 80) -> str:
    """``text`` (a key, a path) unquoted, its middle cut when longer than ``limit`` characters."""
    return text if len(text) <= limit else f"{text[: limit - 25]}...{text[-20:]}"
