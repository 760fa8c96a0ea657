"""Fashion-MNIST (70,000 real 28x28 grey images, 10 classes, MIT) read from the standard IDX files.

``apt-get install -y dataset-fashion-mnist`` puts ``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` in
``/usr/share/datasets/fashion-mnist/`` (the files torchvision's FashionMNIST reads); uncompressed
copies (same names without ``.gz``) are read too. Nothing is downloaded.

IDX format (big-endian): magic ``0x00000803`` (ubyte, 3 dims) for images followed by
``n, rows, cols`` as int32, or ``0x00000801`` (ubyte, 1 dim) for labels followed by ``n``; then
the raw bytes.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from hirl_like.data.base import ImageCaptionDataset, Transform
from hirl_like.data.captions import DEFAULT_TEMPLATES, FASHION_MNIST_CLASSNAMES
from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.registry import DATASETS

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "apt-get install -y dataset-fashion-mnist"
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
_SPLIT_PREFIX = {"train": "train", "holdout": "train", "test": "t10k", "val": "t10k"}  # "val" is an alias of "test"


def _find_idx_file(root: str, name: str) -> str:
    """``root/name.gz`` or ``root/name``; FileNotFoundError with the fix otherwise."""
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Fashion-MNIST root {root!r} does not exist. Set the config key data.root to the folder "
            f"holding the IDX files, or install them with `{INSTALL_HINT}` "
            f"(puts them in {DEFAULT_ROOT})."
        )
    for candidate in (os.path.join(root, name + ".gz"), os.path.join(root, name)):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {os.path.join(root, name)}[.gz] not found. Set the config key data.root "
        f"to the folder holding the IDX files, or install them with `{INSTALL_HINT}`."
    )


def read_idx(path: str, expected_magic: int) -> np.ndarray:
    """Read one IDX file (optionally gzipped) -> uint8 array of its declared shape.

    Raises ValueError naming ``path`` when the file is not gzip-readable, has the wrong magic
    number or is shorter/longer than its header says.
    """
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise ValueError(
            f"cannot read IDX file {path}: {exc}. The file is corrupt; reinstall it ({INSTALL_HINT})."
        ) from exc
    ndim = expected_magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise ValueError(f"IDX file {path} is truncated: {len(raw)} bytes, not even a magic number")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(
            f"IDX file {path} has magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"({'images' if expected_magic == IDX_IMAGES_MAGIC else 'labels'}); wrong or corrupt file"
        )
    if len(raw) < header:
        raise ValueError(f"IDX file {path} is truncated: {len(raw)} bytes, its header alone needs {header}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise ValueError(
            f"IDX file {path} holds {len(raw) - header} data bytes but its header declares shape {shape} "
            f"({expected} bytes); the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def stratified_prefix(labels: np.ndarray, limit: int) -> np.ndarray:
    """A fixed, class-balanced subset of ``limit`` indices, sorted.

    Classes take turns in file order (the k-th sample of every class before the (k+1)-th of any),
    so subsets are nested: ``limit=100`` is contained in ``limit=1000``.
    """
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_class = np.empty(len(labels), dtype=np.int64)
    rank_in_class[order] = np.arange(len(labels)) - starts
    chosen = np.lexsort((np.arange(len(labels)), rank_in_class))[:limit]
    return np.sort(chosen)


@DATASETS.register("FashionMNIST")
class FashionMNISTDataset(ImageCaptionDataset):
    """Fashion-MNIST as an image-caption dataset; ``split`` in {"train", "holdout", "test", "val" (= test)}.

    ``holdout`` (default 0) sets aside the last that many images of the training file as
    ``split="holdout"``, a validation set carved from training data for choosing
    hyper-parameters without looking at the test split; ``split="train"`` then reads the rest.
    ``limit`` keeps a fixed class-balanced subset of that many samples of the split (fast runs).
    ``masks`` / ``mask_options``: HARL's heuristic masks (felzenszwalb or saliency; the IDX files
    hold no per-image files, so no ``folder``), see :mod:`hirl_like.data.masks`.
    """

    classnames = FASHION_MNIST_CLASSNAMES
    default_templates = DEFAULT_TEMPLATES

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        split: str = "train",
        image_size: int = 28,
        limit: int | None = None,
        holdout: int = 0,
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
        if split not in _SPLIT_PREFIX:
            raise ValueError(f"FashionMNIST split must be one of {', '.join(_SPLIT_PREFIX)}; got {split!r}")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int (pixels), got {image_size!r}")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive int or null (all samples), got {limit!r}")
        if not isinstance(holdout, int) or holdout < 0:
            raise ValueError(f"holdout must be an int >= 0 (training images set aside), got {holdout!r}")
        if split == "holdout" and holdout == 0:
            raise ValueError("FashionMNIST split=holdout needs data.holdout > 0 (how many training images to set aside)")
        self.root = str(root)
        self.split = split
        self.image_size = image_size
        prefix = _SPLIT_PREFIX[split]
        images_path = _find_idx_file(self.root, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_idx_file(self.root, f"{prefix}-labels-idx1-ubyte")
        images = read_idx(images_path, IDX_IMAGES_MAGIC)
        labels = read_idx(labels_path, IDX_LABELS_MAGIC).astype(np.int64)
        if len(images) != len(labels):
            raise ValueError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
        if labels.size and labels.max() >= len(self.classnames):
            raise ValueError(f"{labels_path} has label {labels.max()}; Fashion-MNIST labels are 0..9")
        if holdout and _SPLIT_PREFIX[split] == "train":
            if holdout >= len(labels):
                raise ValueError(f"data.holdout={holdout} leaves no training image of {len(labels)}")
            part = slice(len(labels) - holdout, None) if split == "holdout" else slice(0, len(labels) - holdout)
            images, labels = images[part], labels[part]
        if limit is not None and limit < len(labels):
            keep = stratified_prefix(labels, limit)
            images, labels = images[keep], labels[keep]
        self._images = images
        self._targets = labels
        identity = {"root": os.path.abspath(self.root), "split": split, "image_size": image_size, "limit": limit,
                    "holdout": holdout}
        self.set_masks(masks, mask_options, identity)  # HARL's heuristic masks (hirl_like.data.masks)

    def __len__(self) -> int:
        return len(self._targets)

    def load(self, index: int) -> tuple[Image.Image, int]:
        img = Image.fromarray(self._images[index])  # uint8 (28, 28) -> mode "L"
        if self.image_size != img.width:
            img = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        return img.convert("RGB"), int(self._targets[index])
