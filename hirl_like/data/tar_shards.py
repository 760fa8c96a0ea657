"""Local tar shards: sample keys, counting samples from headers, spotting cut-short shards, and the
``sizes.json`` file of shard sizes.

A complete tar archive ends with an end-of-archive marker (two 512-byte zero blocks; Python's
``tarfile``, webdataset's ``TarWriter`` and GNU tar write it). A shard cut short by an interrupted
copy lacks it, also when the cut falls exactly between two samples, where ``tarfile`` itself reads
the shorter archive without complaint. :func:`inspect_tar` checks for the marker (at least its
first block), so such a shard is reported instead of silently counting fewer samples.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import warnings
from dataclasses import dataclass

from webdataset.tariterators import base_plus_ext

SIZES_FILE = "sizes.json"
_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta pattern
_BLOCK = 512


def sample_key(name: str) -> str | None:
    """The sample a tar member belongs to (webdataset's rule: the name up to the basename's first
    dot), or None for members webdataset skips (``__meta__`` files, names without a dot)."""
    if (name.startswith("__") and "/" not in name and name.endswith("__")) or _META_MEMBER.match(name):
        return None
    return base_plus_ext(name)[0]


@dataclass(frozen=True)
class TarInspection:
    """What the headers of one shard say: ``samples`` readable, ``complete`` (read to a proper
    end-of-archive marker) and, when not, ``problem`` (one line)."""

    path: str
    samples: int
    complete: bool
    problem: str = ""


def inspect_tar(path: str) -> TarInspection:
    """Count the samples of a local (optionally compressed) tar from its member headers (random
    access skips the data) and check that it ends with an end-of-archive marker."""
    n, last = 0, None
    try:
        with tarfile.open(path, "r:*") as tf:
            for info in tf:
                if not info.isreg():
                    continue
                key = sample_key(info.name)
                if key is not None and key != last:
                    n, last = n + 1, key
            tf.fileobj.seek(tf.offset)  # where the next header would start
            tail = tf.fileobj.read(_BLOCK)
    except (tarfile.TarError, OSError, EOFError) as err:
        return TarInspection(path, n, False, f"unreadable after {n} samples ({err})")
    if len(tail) < _BLOCK or tail.count(0) != _BLOCK:
        how = "ends right after a member" if not tail else "ends inside a member header"
        return TarInspection(
            path, n, False, f"cut short: unreadable after {n} samples ({how}, no tar end-of-archive marker; an interrupted copy?)"
        )
    return TarInspection(path, n, True)


def count_tar_samples(path: str) -> int:
    """Samples in a local tar shard (:func:`inspect_tar`).

    A shard unreadable from some point on, or cut short, counts the samples before that point
    (reading it later stops at the same point and reports the rest as ``shard_error``) and warns;
    ``tools/check_data.py`` counts such shards.
    """
    report = inspect_tar(path)
    if not report.complete:
        warnings.warn(f"shard {path} is {report.problem}; counting {report.samples}", stacklevel=2)
    return report.samples


def read_sizes(path: str) -> dict[str, int]:
    """``{shard name: sample count}`` from a sizes file; {} when absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            sizes = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}
    return {str(k): int(v) for k, v in sizes.items()} if isinstance(sizes, dict) else {}


def write_sizes(path: str, sizes: dict[str, int]) -> bool:
    """Atomic write; False when the folder is read-only (the counts are then recomputed next run)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(dict(sorted(sizes.items())), f, indent=0)
        os.replace(tmp, path)
        return True
    except OSError:
        return False
