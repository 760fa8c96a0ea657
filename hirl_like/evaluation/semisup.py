"""Class-balanced, seeded label subsets for semi-supervised fine-tuning (1% / 10% protocols).

SimCLR / BYOL / SwAV / iBOT report fine-tuning on 1% and 10% of the ImageNet labels, each class
keeping its share of images. Here a fraction f in (0, 1] keeps, in every class c with n_c
training images, ``max(1, round(f * n_c))`` of them (at least one image per class, so the head
sees every class), chosen by a permutation seeded with ``seed``. The same (labels, f, seed)
always give the same indices, and the indices are written to a JSON file beside the results so
that a run can be repeated exactly, or another method fine-tuned on the same images
(:func:`write_indices`, :func:`read_indices`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hirl_like.evaluation.report import write_json

INDICES_FORMAT = "hirl_like.semisup_indices/1"


def check_fraction(fraction: float) -> float:
    """``fraction`` as a float, or ValueError unless it lies in (0, 1]."""
    value = float(fraction)
    if not 0.0 < value <= 1.0:  # also refuses nan
        raise ValueError(f"label fraction must be in (0, 1] (e.g. 0.01 or 0.1 for the 1% / 10% protocols), got {fraction!r}.")
    return value


def per_class_count(n_c: int, fraction: float) -> int:
    """Images kept of a class with ``n_c`` images: ``max(1, round(fraction * n_c))``, at most ``n_c``."""
    return min(n_c, max(1, int(round(fraction * n_c))))


def class_balanced_subset(labels: Tensor | Sequence[int], fraction: float, seed: int = 0) -> Tensor:
    """Sorted (K,) int64 indices into ``labels`` (N,): ``per_class_count(n_c, fraction)`` per class.

    Each class draws its members from ``torch.randperm`` on a generator seeded with ``seed``
    (classes in increasing order), so the result depends on (labels, fraction, seed) only; the
    global RNG is untouched. ``fraction=1`` keeps every index.
    """
    fraction = check_fraction(fraction)
    labels = torch.as_tensor(labels, dtype=torch.long).cpu().view(-1)
    if labels.numel() == 0:
        raise ValueError("the training split has no labelled images to draw a subset from.")
    if int(labels.min()) < 0:
        raise ValueError("the training split has images without a label (label < 0); a label subset needs labels.")
    gen = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero(as_tuple=True)[0]
        order = torch.randperm(members.numel(), generator=gen)
        chosen.append(members[order[: per_class_count(members.numel(), fraction)]])
    return torch.cat(chosen).sort().values


def subset_record(
    indices: Tensor, labels: Tensor | Sequence[int], fraction: float, seed: int, **where: Any
) -> dict[str, Any]:
    """The JSON record of a subset: its indices, per-class counts, fraction, seed and ``where``
    (the data set, split and split size it indexes)."""
    labels = torch.as_tensor(labels, dtype=torch.long).view(-1)
    picked = labels[torch.as_tensor(indices, dtype=torch.long)]
    classes, counts = torch.unique(picked, return_counts=True)
    return {
        "format": INDICES_FORMAT,
        **where,
        "split_size": int(labels.numel()),
        "fraction": float(fraction),
        "seed": int(seed),
        "size": int(picked.numel()),
        "per_class": {str(int(c)): int(n) for c, n in zip(classes, counts)},
        "indices": [int(i) for i in indices],
    }


def write_indices(path: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Write a :func:`subset_record` atomically as JSON; returns the path."""
    write_json(path, dict(record))
    return Path(path)


def read_indices(path: str | os.PathLike[str], split_size: int | None = None) -> dict[str, Any]:
    """Read a file written by :func:`write_indices` (or any JSON list of indices / {"indices": [...]}).

    ``split_size``, when given, is the length of the split the indices must index: a file made for
    a split of another size (another data set, another val_fraction) is refused, as are
    out-of-range or repeated indices. Returns the record with ``indices`` as a sorted list.
    Raises FileNotFoundError naming the path, ValueError for a file that does not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label indices file not found: {path} (check --label_indices).")
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a JSON file of label indices: {err}") from err
    if isinstance(record, list):
        record = {"indices": record}
    raw = record.get("indices") if isinstance(record, dict) else None
    if not isinstance(raw, list) or not raw or not all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
        raise ValueError(f"{path}: expected {{'indices': [int, ...]}} (a non-empty list of image indices).")
    if len(set(raw)) != len(raw):
        raise ValueError(f"{path}: {len(raw) - len(set(raw))} indices occur more than once.")
    if split_size is not None:
        if record.get("split_size") is not None and int(record["split_size"]) != split_size:
            raise ValueError(
                f"{path} was drawn from a training split of {record['split_size']} images, but this one has "
                f"{split_size}: it indexes other data (another data set or split). Draw a new subset with --label_fraction."
            )
        bad = [i for i in raw if not 0 <= i < split_size]
        if bad:
            raise ValueError(f"{path}: indices {bad[:5]} are outside the training split's 0..{split_size - 1}.")
    return {**record, "indices": sorted(raw)}
