"""Embedded handwritten digits: scikit-learn's ``load_digits`` (1,797 real 8x8 images, 10 classes).

Ships inside scikit-learn, so it works offline everywhere: the quickstart and fast tests use it.
Pixels 0..16 are scaled to 0..255 (``round(v * 255 / 16)``), upsampled to ``image_size`` with
bilinear interpolation and replicated to RGB. The train/val split is a fixed stratified split
(``train_test_split(..., stratify=y, random_state=0)``), the same on every machine.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from hirl_like.data.base import ImageCaptionDataset, Transform
from hirl_like.data.captions import DIGIT_CLASSNAMES, DIGIT_TEMPLATES
from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.registry import DATASETS

SPLITS = ("train", "val", "all")


@functools.lru_cache(maxsize=1)
def _load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1797, 8, 8) in 0..255, labels int64 (1797,)); read once per process."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _split_indices(val_fraction: float) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, labels = _load_digits_uint8()
    all_idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(all_idx, test_size=val_fraction, stratify=labels, random_state=0)
    return {"train": np.sort(train_idx), "val": np.sort(val_idx), "all": all_idx}


@DATASETS.register("Digits")
class DigitsDataset(ImageCaptionDataset):
    """scikit-learn digits as an image-caption dataset; ``split`` in {"train", "val", "all"}.

    ``masks`` / ``mask_options``: HARL's heuristic masks (felzenszwalb or saliency; the digits have
    no files, so no ``folder``), see :mod:`hirl_like.data.masks`.
    """

    classnames = DIGIT_CLASSNAMES
    default_templates = DIGIT_TEMPLATES

    def __init__(
        self,
        split: str = "train",
        image_size: int = 32,
        val_fraction: float = 0.2,
        transform: Transform | None = None,
        tokenizer: ClipTokenizer | None = None,
        templates: Sequence[str] | None = None,
        caption_noise: float = 0.0,
        seed: int = 0,
        masks: str | None = None,
        mask_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            transform=transform, tokenizer=tokenizer, templates=templates, caption_noise=caption_noise, seed=seed
        )
        if split not in SPLITS:
            raise ValueError(f"Digits split must be one of {', '.join(SPLITS)}; got {split!r}")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int (pixels), got {image_size!r}")
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        self.split = split
        self.image_size = image_size
        self.val_fraction = float(val_fraction)
        images, labels = _load_digits_uint8()
        self._indices = _split_indices(self.val_fraction)[split]
        self._images = images[self._indices]
        self._targets = labels[self._indices]
        identity = {"split": split, "image_size": image_size, "val_fraction": self.val_fraction}
        self.set_masks(masks, mask_options, identity)  # HARL's heuristic masks (hirl_like.data.masks)

    def __len__(self) -> int:
        return len(self._indices)

    def load(self, index: int) -> tuple[Image.Image, int]:
        img = Image.fromarray(self._images[index])  # uint8 (H, W) -> mode "L"
        if self.image_size != 8:
            img = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        return img.convert("RGB"), int(self._targets[index])
