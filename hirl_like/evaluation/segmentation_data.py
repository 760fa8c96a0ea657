"""A semantic-segmentation set pasted together from a classification set's real images.

Each canvas is a black ``S x S`` grey image holding ``K ~ U{min_items..max_items}`` items, each an
image of the source dataset resized to ``item_size`` and pasted at a uniformly drawn top-left
corner (items may overlap; a later item covers an earlier one where its foreground lies). The mask
labels every pixel of an item's foreground with the item's class + 1, everything else 0::

    fg_k(p)   = item_k(p) > threshold                       (grey value 0..255)
    canvas(p) = item_k(p)      where fg_k(p), k the last item covering p, else 0
    mask(p)   = label_k + 1    where fg_k(p), k the last item covering p, else 0

Everything random (item counts, which images, positions) comes from one
``numpy.random.default_rng(seed)``, so a seed gives the same canvases on every machine; the set is
cached as an ``.npz`` keyed by every parameter and the dataset's config node.
Meant for dark-background items (Fashion-MNIST, digits), whose foreground a threshold finds.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CACHE_VERSION = 1  # bump when the construction changes, so old caches are not reused


@dataclass(frozen=True)
class CanvasSpec:
    """How canvases are built (every field is part of the cache key)."""

    num_canvases: int
    canvas_size: int
    item_size: int
    min_items: int = 1
    max_items: int = 4
    threshold: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_canvases < 1:
            raise ValueError(f"the number of canvases must be >= 1, got {self.num_canvases}")
        if not 1 <= self.item_size <= self.canvas_size:
            raise ValueError(f"item_size {self.item_size} must be in 1..canvas_size ({self.canvas_size})")
        if not 1 <= self.min_items <= self.max_items:
            raise ValueError(f"items per canvas: need 1 <= min_items ({self.min_items}) <= max_items ({self.max_items})")
        if not 0 <= self.threshold < 255:
            raise ValueError(f"threshold must be a grey level in 0..254, got {self.threshold}")


@dataclass
class SegmentationSet:
    """``images`` uint8 (N, S, S) grey canvases, ``masks`` uint8 (N, S, S) class ids in 0..num_classes-1
    (0 = background), ``num_classes`` = source classes + 1."""

    images: np.ndarray
    masks: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return len(self.images)


def grey_item(dataset: Any, index: int, size: int) -> tuple[np.ndarray, int]:
    """Sample ``index`` of a dataset with ``load(i) -> (PIL image, label)`` as uint8 (size, size) grey and its label."""
    img, label = dataset.load(int(index))
    img = img.convert("L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8), int(label)


def source_num_classes(dataset: Any) -> int:
    """Classes of the source dataset: its ``classnames``, else its largest target + 1."""
    names = getattr(dataset, "classnames", None) or ()
    if names:
        return len(names)
    targets = getattr(dataset, "targets", None)
    if targets is None or len(targets) == 0:
        raise ValueError(f"{type(dataset).__name__} has neither classnames nor targets: cannot number its classes.")
    return int(np.max(np.asarray(targets))) + 1


def build_canvases(dataset: Any, spec: CanvasSpec, num_classes: int | None = None) -> SegmentationSet:
    """Paste items of ``dataset`` (``load(i)``, ``len``) into ``spec.num_canvases`` canvases (see the module doc).

    ``num_classes`` (source classes) defaults to :func:`source_num_classes`; the set has one more (background).
    """
    if len(dataset) == 0:
        raise ValueError(f"{type(dataset).__name__} is empty: no items to paste into canvases.")
    num_classes = source_num_classes(dataset) if num_classes is None else num_classes
    rng = np.random.default_rng(spec.seed)
    n, s, k = spec.num_canvases, spec.canvas_size, spec.item_size
    counts = rng.integers(spec.min_items, spec.max_items + 1, size=n)
    total = int(counts.sum())
    picks = rng.integers(0, len(dataset), size=total)
    corners = rng.integers(0, s - k + 1, size=(total, 2))  # (row, col) of each item's top-left pixel
    items = {int(i): grey_item(dataset, i, k) for i in np.unique(picks)}
    images = np.zeros((n, s, s), dtype=np.uint8)
    masks = np.zeros((n, s, s), dtype=np.uint8)
    j = 0
    for c in range(n):
        for _ in range(int(counts[c])):
            item, label = items[int(picks[j])]
            if not 0 <= label < num_classes:
                raise ValueError(f"item {int(picks[j])} has label {label}, outside 0..{num_classes - 1}")
            r0, c0 = (int(v) for v in corners[j])
            fg = item > spec.threshold
            window = (c, slice(r0, r0 + k), slice(c0, c0 + k))
            images[window] = np.where(fg, item, images[window])
            masks[window] = np.where(fg, label + 1, masks[window])
            j += 1
    return SegmentationSet(images=images, masks=masks, num_classes=num_classes + 1)


def cache_key(spec: CanvasSpec, data_node: Mapping[str, Any], split: str) -> str:
    """A short hash of everything the canvases depend on."""
    blob = json.dumps({"v": CACHE_VERSION, "spec": asdict(spec), "data": dict(data_node), "split": split},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/hirl_like/segmentation`` (``~/.cache/...`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "hirl_like" / "segmentation"


def cached_canvases(
    dataset: Any, spec: CanvasSpec, data_node: Mapping[str, Any], split: str, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[SegmentationSet, Path]:
    """:func:`build_canvases`, read from / written to ``cache_dir/<name>_<split>_<key>.npz`` (atomic write)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = str(data_node.get("name", "data"))
    path = folder / f"{name}_{split}_{cache_key(spec, data_node, split)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return SegmentationSet(z["images"], z["masks"], int(z["num_classes"])), path
    built = build_canvases(dataset, spec)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, images=built.images, masks=built.masks, num_classes=built.num_classes)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared cache should be readable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return built, path
