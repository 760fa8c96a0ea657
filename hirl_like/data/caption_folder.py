"""Image-caption pairs in folders: img2dataset's ``files`` output and the reference Harmony layout.

Layout: every ``*.jpg|*.jpeg|*.png|*.webp`` under ``root`` (any depth) is a sample; its caption is
the ``*.txt`` file with the same stem in the same folder::

    root/00000/000000000.jpg   root/00000/000000000.txt   (root/00000/000000000.json is ignored)
    root/00001/000010000.jpg   ...

The folder is scanned once at construction (``os.scandir``, sorted, hidden entries skipped,
symlinks followed), so sample ``i`` is the same file on every machine and rank. An image without
a caption file stays in the index: reading it yields a ``missing_caption`` bad sample, counted and
reported (:mod:`hirl_like.data.bad_samples`) rather than silently dropped. A caption without an
image is not a sample.

``index_cache`` (a file path) stores the scan: a JSON header line, then ``<has_caption>\\t<path>``
per image. A later run with the same root reads it instead of walking millions of files. It is
not refreshed automatically: delete it after changing the folder.

This module also holds :class:`ImageTextPairs`, the map-style base shared with the CSV reader:
captions come from the data (not class-name templates), ``label`` is -1, bad samples become
:class:`~hirl_like.data.bad_samples.BadSample` sentinels, and ``caption_noise = p`` gives a fixed
fraction ~p of the samples the caption of another sample::

    noisy(i) = u(seed, i) < p,   j(i) = (i + 1 + floor(u'(seed, i) * (N - 1))) mod N   (j != i)

with ``u, u'`` splitmix64 hashes (:func:`~hirl_like.data.captions.mix_seed`), so the same samples
carry the same wrong captions in every epoch, worker and resumed run. If j's caption is itself
missing, sample i keeps its own.

Vision-only methods (DINO, iBOT, MAE: no text tower, so the dataset gets no tokenizer) need no
captions: without a tokenizer a missing or empty caption is not a bad sample, the sample's
``caption`` is then "", and a folder or CSV without any captions is fine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from PIL import Image

from hirl_like.data.bad_samples import (
    BadSample,
    BadSampleError,
    bad_sample,
    check_limit_args,
    read_caption_file,
)
from hirl_like.data.base import ImageCaptionDataset, Transform
from hirl_like.data.captions import mix_seed
from hirl_like.data.decode import decode_image
from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.registry import DATASETS

CAPTION_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
INDEX_CACHE_FORMAT = "hirl_like.caption_folder.v1"
NO_LABEL = -1

_SALT_PAIR_NOISY = 0xCA01
_SALT_PAIR_OTHER = 0xCA02


def hash_uniform(*keys: int) -> float:
    """A U[0, 1) draw that is a pure function of ``keys`` (53 bits of :func:`mix_seed`)."""
    return (mix_seed(*keys) >> 11) / float(1 << 53)


class PackedStrings:
    """An immutable list of strings stored as one UTF-8 byte array plus offsets.

    A Python list of millions of ``str`` objects gets copied page by page into every forked
    DataLoader worker as reference counts are touched; two NumPy arrays are shared instead.
    """

    def __init__(self, strings: Iterable[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        self._data = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        a, b = self._offsets[i], self._offsets[i + 1]
        return self._data[a:b].tobytes().decode("utf-8")


def make_pair_sample(dataset: ImageCaptionDataset, img: Image.Image, caption: str, index: int) -> dict[str, Any]:
    """``{**transform(img), "label": -1, "index", "text" (if tokenizer), "caption"}`` with the
    transform seeded from (seed, epoch, index) as in :class:`ImageCaptionDataset`."""
    sample = dataset._apply_transform(img, index)
    sample["label"] = NO_LABEL
    sample["index"] = int(index)
    if dataset.tokenizer is not None:
        sample["text"] = dataset.tokenizer(caption)[0]
    sample["caption"] = caption
    return sample


class ImageTextPairs(ImageCaptionDataset):
    """Map-style image-caption pairs; subclasses fill ``self._images`` (PackedStrings of image
    paths) and implement :meth:`raw_caption`.

    ``dataset[i]`` is a sample dict (see :func:`make_pair_sample`) or, when the image or caption
    is bad, a :class:`BadSample` that the loaders' collate function drops and counts.
    """

    classnames = ()  # captions come from the data; there are no classes

    def __init__(
        self,
        transform: Transform | None = None,
        tokenizer: ClipTokenizer | None = None,
        caption_noise: float = 0.0,
        seed: int = 0,
        max_bad_fraction: float = 0.01,
        max_bad_samples: int | None = None,
    ) -> None:
        super().__init__(transform=transform, tokenizer=tokenizer, caption_noise=caption_noise, seed=seed)
        check_limit_args(max_bad_fraction, max_bad_samples)
        self.max_bad_fraction = float(max_bad_fraction)
        self.max_bad_samples = max_bad_samples
        self._images = PackedStrings([])

    def raw_caption(self, index: int) -> str:  # pragma: no cover - abstract
        """The stripped caption of sample ``index``; raises BadSampleError when missing or empty."""
        raise NotImplementedError

    def image_path(self, index: int) -> str:
        return self._images[index]

    def sample_name(self, index: int) -> str:
        """How a bad sample is named in reports: its image path."""
        return self.image_path(index)

    def __len__(self) -> int:
        return len(self._images)

    def _check_noise(self) -> None:
        if self.caption_noise > 0 and len(self) < 2:
            raise ValueError("caption_noise needs at least 2 samples (a noisy caption comes from another sample)")

    @property
    def targets(self) -> list[int]:
        raise ValueError(
            f"{type(self).__name__} holds image-caption pairs without class labels; evaluate "
            "k-NN / linear probe / clustering on a labelled dataset (ImageFolder, FashionMNIST, Digits)"
        )

    def caption_source(self, index: int) -> int:
        """The sample whose caption sample ``index`` carries: itself, or j(index) when noisy."""
        n = len(self)
        if self.caption_noise <= 0 or hash_uniform(self.seed, _SALT_PAIR_NOISY, index) >= self.caption_noise:
            return index
        return (index + 1 + int(hash_uniform(self.seed, _SALT_PAIR_OTHER, index) * (n - 1))) % n

    @property
    def captions_required(self) -> bool:
        """Captions matter only to a pipeline with a text tower, i.e. when there is a tokenizer."""
        return self.tokenizer is not None

    def caption(self, index: int) -> str:
        """Caption of sample ``index`` after caption noise; raises BadSampleError if its own is bad."""
        own = self.raw_caption(index)  # a sample with a bad caption is bad even when noise replaces it
        source = self.caption_source(index)
        if source == index:
            return own
        try:
            return self.raw_caption(source)
        except BadSampleError:
            return own

    def _optional_caption(self, index: int) -> str:
        try:
            return self.caption(index)
        except BadSampleError:
            return ""

    def load(self, index: int) -> tuple[Image.Image, int]:
        return decode_image(self.image_path(index)), NO_LABEL

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:  # type: ignore[override]
        index = int(index)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {n}")
        index %= n
        try:
            caption = self.caption(index) if self.captions_required else self._optional_caption(index)
            img, _ = self.load(index)  # the caption is cheap, so it is checked before decoding
        except BadSampleError as err:
            return bad_sample(index, self.sample_name(index), err)
        return make_pair_sample(self, img, caption, index)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, epoch={self.epoch}, seed={self.seed}, caption_noise={self.caption_noise})"


# --------------------------------------------------------------------------------------------
# the folder layout
# --------------------------------------------------------------------------------------------
def scan_caption_folder(root: str) -> tuple[list[str], list[bool]]:
    """(image paths relative to ``root``, sorted; whether each has a same-stem ``.txt``)."""
    images: list[str] = []
    has_caption: list[bool] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(os.path.join(root, rel_dir)), key=lambda e: e.name)
        except OSError as err:
            raise FileNotFoundError(f"cannot list {os.path.join(root, rel_dir)!r} under data.root: {err}") from None
        names = {e.name for e in entries}
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=True):
                subdirs.append(os.path.join(rel_dir, e.name))
            elif e.name.lower().endswith(CAPTION_IMAGE_EXTENSIONS):
                images.append(os.path.join(rel_dir, e.name))
                has_caption.append(os.path.splitext(e.name)[0] + ".txt" in names)
        stack.extend(reversed(subdirs))  # depth-first in name order
    order = sorted(range(len(images)), key=lambda i: images[i])
    return [images[i] for i in order], [has_caption[i] for i in order]


def _read_index_cache(path: str, root: str) -> tuple[list[str], list[bool]] | None:
    """The cached scan, or None when the file is absent or was written for another root/format."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            header = json.loads(f.readline())
        except json.JSONDecodeError:
            return None
        if not isinstance(header, dict) or header.get("format") != INDEX_CACHE_FORMAT or header.get("root") != root:
            return None
        images, has_caption = [], []
        for line in f:
            flag, _, rel = line.rstrip("\n").partition("\t")
            images.append(rel)
            has_caption.append(flag == "1")
    if len(images) != header.get("count"):
        return None  # a partly written file
    return images, has_caption


def _write_index_cache(path: str, root: str, images: list[str], has_caption: list[bool]) -> None:
    """Atomic write (temp file + rename), so concurrent ranks never read half a cache."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps({"format": INDEX_CACHE_FORMAT, "root": root, "count": len(images)}) + "\n")
        for rel, flag in zip(images, has_caption):
            f.write(f"{int(flag)}\t{rel}\n")
    os.replace(tmp, path)


@DATASETS.register("ImageCaptionFolder")
class ImageCaptionFolder(ImageTextPairs):
    """``root/**/<stem>.{jpg,jpeg,png,webp}`` + ``<stem>.txt`` as image-caption pairs.

    Args:
        root: the folder (config key ``data.root``).
        index_cache: optional file storing the scan (read when present and written for this root).
        transform, tokenizer, seed, caption_noise, max_bad_fraction, max_bad_samples: see
            :class:`ImageTextPairs` and :mod:`hirl_like.data.bad_samples`.
        masks, mask_options: HARL's heuristic masks, see :mod:`hirl_like.data.masks`.
    """

    def __init__(
        self,
        root: str,
        index_cache: str | None = None,
        transform: Transform | None = None,
        tokenizer: ClipTokenizer | None = None,
        caption_noise: float = 0.0,
        seed: int = 0,
        max_bad_fraction: float = 0.01,
        max_bad_samples: int | None = None,
        masks: str | None = None,
        mask_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            transform=transform, tokenizer=tokenizer, caption_noise=caption_noise, seed=seed,
            max_bad_fraction=max_bad_fraction, max_bad_samples=max_bad_samples,
        )
        if not isinstance(root, str) or not root:
            raise ValueError(f"root must be a folder path (config key data.root), got {root!r}")
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"image-caption folder {root!r} does not exist. Set the config key data.root to a folder of "
                "<stem>.jpg + <stem>.txt pairs (img2dataset output_format=files)."
            )
        self.root = os.path.abspath(root)
        self.index_cache = index_cache
        cached = _read_index_cache(index_cache, self.root) if index_cache else None
        if cached is None:
            images, has_caption = scan_caption_folder(self.root)
            if index_cache and images:
                _write_index_cache(index_cache, self.root, images, has_caption)
        else:
            images, has_caption = cached
        if not images:
            raise ValueError(
                f"no images ({', '.join(CAPTION_IMAGE_EXTENSIONS)}) found under data.root={root!r}; expected "
                "<stem>.jpg with a <stem>.txt caption, in sub-folders (img2dataset output_format=files)"
            )
        self._images = PackedStrings(images)
        self._has_caption = np.asarray(has_caption, dtype=bool)
        self.missing_captions = int((~self._has_caption).sum())
        self._check_noise()
        self.set_masks(masks, mask_options, {"root": self.root}, image_root=self.root)  # hirl_like.data.masks

    def image_path(self, index: int) -> str:
        return os.path.join(self.root, self._images[index])

    def caption_path(self, index: int) -> str | None:
        if not self._has_caption[index]:
            return None
        return os.path.splitext(self.image_path(index))[0] + ".txt"

    def raw_caption(self, index: int) -> str:
        return read_caption_file(self.caption_path(index))
