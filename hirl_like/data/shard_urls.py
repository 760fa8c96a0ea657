"""Shard URL lists: brace expansion, local or remote, and opening one shard.

``data.urls`` takes a brace pattern (``shards/{00000..00331}.tar``), several joined by ``::``
(open_clip's convention), or a list. Local paths (and ``file://`` URLs) are opened with ``open``;
anything else goes through ``webdataset.gopen`` (``http(s)://`` via curl, ...), except URLs that
run a shell command, which need ``--allow-pipe-urls`` (:mod:`hirl_like.data.pipe_urls`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO

import braceexpand
from webdataset.gopen import gopen

from hirl_like.data.pipe_urls import check_command_urls


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Brace-expanded shard list, in the given order; ``"a.tar::b.tar"`` splits as in open_clip."""
    if isinstance(urls, str):
        patterns = urls.split("::")
    elif isinstance(urls, Sequence) and all(isinstance(u, str) for u in urls):
        patterns = list(urls)
    else:
        raise ValueError(f"urls must be a string or a list of strings (config key data.urls), got {urls!r}")
    out = [u for p in patterns for u in braceexpand.braceexpand(p.strip()) if u]
    if not out:
        raise ValueError(f"data.urls={urls!r} names no shard")
    if len(set(out)) != len(out):
        raise ValueError(f"data.urls={urls!r} names some shard twice; every shard must appear once")
    return out


def is_local(url: str) -> bool:
    return "://" not in url and not url.lower().startswith("pipe:") or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def open_shard(url: str) -> IO[bytes]:
    """A binary stream of the shard; refuses command URLs unless allowed (ValueError)."""
    check_command_urls([url])
    return gopen(url, "rb")
