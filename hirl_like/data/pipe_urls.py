"""No shell command from a config file: ``pipe:`` shard URLs need a command-line flag.

webdataset opens ``pipe:CMD`` by running ``CMD`` with ``shell=True``. A config file is data that
people share, so ``data.urls`` naming a ``pipe:`` URL is refused unless the process was started
with ``--allow-pipe-urls`` (``tools/train.py``, ``tools/check_data.py``), which calls
:func:`allow_pipe_urls`. The switch is the environment variable :data:`ALLOW_PIPE_URLS_ENV`, so
DataLoader workers (forked or spawned) and processes started by ``launch.py`` inherit it; no
config key sets it, and OmegaConf's ``${oc.env:...}`` only reads the environment.

Only ``pipe:`` runs a command chosen by the URL text. The other remote schemes webdataset knows
(``http(s)``, ``sftp``, ``ftps``, ``scp`` through ``curl``; ``gs`` through ``gsutil``; ``ais``;
``hf``) start a fixed program with the URL as one argument, no shell, and stay allowed. A URL is
checked as written and as rewritten by webdataset's ``GOPEN_REWRITE`` environment variable, and
the scheme is read as ``urllib`` reads it (``PIPE:`` counts too).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from urllib.parse import urlparse

from webdataset.gopen import rewrite_url

ALLOW_PIPE_URLS_ENV = "HIRL_ALLOW_PIPE_URLS"
ALLOW_PIPE_URLS_FLAG = "--allow-pipe-urls"
ALLOW_PIPE_URLS_HELP = (
    "let data.urls use pipe: URLs, which run a shell command (webdataset); "
    "off by default so that a config file cannot run commands"
)
COMMAND_SCHEMES = ("pipe",)


def allow_pipe_urls(enabled: bool = True) -> None:
    """Turn the process-level switch on (or off); called by the command-line flag only."""
    if enabled:
        os.environ[ALLOW_PIPE_URLS_ENV] = "1"
    else:
        os.environ.pop(ALLOW_PIPE_URLS_ENV, None)


def pipe_urls_allowed() -> bool:
    return os.environ.get(ALLOW_PIPE_URLS_ENV, "") == "1"


def runs_a_command(url: str) -> bool:
    """Whether webdataset would run a shell command to open ``url``."""
    candidates = [url]
    try:
        candidates.append(rewrite_url(url))
    except Exception:  # noqa: BLE001 - webdataset refuses rewriting in its secure mode
        pass
    for candidate in candidates:
        try:
            scheme = urlparse(candidate).scheme
        except ValueError:  # an unparsable URL is not opened by a pipe handler either
            continue
        if scheme.lower() in COMMAND_SCHEMES:
            return True
    return False


def shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_command_urls(urls: Iterable[str], key: str = "data.urls") -> None:
    """ValueError (one line) when a URL would run a command and the switch is off."""
    if pipe_urls_allowed():
        return
    for url in urls:
        if runs_a_command(url):
            raise ValueError(
                f"{key}={shorten(url)!r} is a pipe: URL, which runs a shell command; refused because a config "
                f"file must not run commands. Pass {ALLOW_PIPE_URLS_FLAG} on the command line to allow it "
                "(e.g. tools/train.py -c CONFIG --allow-pipe-urls), or point data.urls at local tar files"
            )
