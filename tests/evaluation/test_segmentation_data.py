"""Canvases of pasted items: deterministic per seed, masks that match the pasted items, cached."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hirl_like.data.digits import DigitsDataset
from hirl_like.evaluation.segmentation_data import CanvasSpec, build_canvases, cached_canvases


class CodedItems:
    """Item i: a plus-shaped foreground of grey 100 + i on a black background, label i % 3.

    Every item has its own grey level, so the item showing at a canvas pixel (hence its label) is
    read back from the canvas alone."""

    classnames = ("a", "b", "c")

    def __init__(self, n: int = 20, size: int = 8, fail: bool = False) -> None:
        self.n, self.size, self.fail = n, size, fail

    def __len__(self) -> int:
        return self.n

    def load(self, index: int) -> tuple[Image.Image, int]:
        if self.fail:
            raise AssertionError("the cache should have been read instead")
        img = np.zeros((self.size, self.size), dtype=np.uint8)
        mid = self.size // 2
        img[mid - 1:mid + 1, :] = img[:, mid - 1:mid + 1] = 100 + index
        return Image.fromarray(img).convert("RGB"), index % 3


SPEC = CanvasSpec(num_canvases=40, canvas_size=24, item_size=8, seed=3)


def test_same_seed_same_canvases_other_seed_others():
    a, b = build_canvases(CodedItems(), SPEC), build_canvases(CodedItems(), SPEC)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    c = build_canvases(CodedItems(), CanvasSpec(**{**SPEC.__dict__, "seed": 4}))
    assert not np.array_equal(a.masks, c.masks)


def test_masks_match_the_pasted_items():
    data = build_canvases(CodedItems(), SPEC)
    assert data.images.shape == data.masks.shape == (40, 24, 24) and data.num_classes == 4
    fg = data.masks > 0
    assert np.all(data.images[~fg] == 0)  # background 0 exactly where no item foreground lies
    expected = (data.images[fg].astype(int) - 100) % 3 + 1  # the label of the item whose grey shows
    assert np.array_equal(data.masks[fg], expected)
    counts = [len(np.unique((data.images[i][data.images[i] > 0]))) for i in range(40)]
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1  # 1..4 items, visible ones


def test_real_digits_canvases():
    spec = CanvasSpec(num_canvases=30, canvas_size=32, item_size=16, seed=0)
    data = build_canvases(DigitsDataset(split="val"), spec)
    assert data.num_classes == 11
    assert data.masks.min() == 0 and data.masks.max() <= 10
    assert np.all(data.images[data.masks > 0] > spec.threshold)
    assert np.all(data.images[data.masks == 0] == 0)
    assert all((m > 0).any() for m in data.masks)  # every canvas holds an item
    assert len(np.unique(data.masks)) > 5  # many classes across the set


def test_cache_is_reused_and_keyed_by_the_parameters(tmp_path):
    node = {"name": "Coded", "n": 20}
    first, path = cached_canvases(CodedItems(), SPEC, node, "train", tmp_path)
    again, same = cached_canvases(CodedItems(fail=True), SPEC, node, "train", tmp_path)
    assert same == path and path.is_file()
    assert np.array_equal(first.masks, again.masks) and again.num_classes == first.num_classes
    _, other = cached_canvases(CodedItems(), SPEC, node, "val", tmp_path)
    assert other != path


def test_bad_spec_is_refused():
    with pytest.raises(ValueError, match="item_size"):
        CanvasSpec(num_canvases=1, canvas_size=8, item_size=16)
    with pytest.raises(ValueError, match="min_items"):
        CanvasSpec(num_canvases=1, canvas_size=8, item_size=4, min_items=3, max_items=2)
