"""HARL's heuristic foreground masks per training image: computed once and cached, or read from files.

Config (the data node, next to the dataset's own options)::

    data:
      masks: felzenszwalb        # felzenszwalb | saliency | folder | null (no masks, the default)
      mask_options: {scale: 100}  # optional, the method's settings below

``felzenszwalb`` and ``saliency`` compute the mask from the image the dataset loads (after its own
resize, e.g. ``data.image_size``) with :mod:`hirl_like.data.mask_heuristics`, the first time a
sample is read, and write it as an 8-bit PNG (0 / 255) into the cache::

    <cache_dir>/<method>-<digest>/<sha1(name)[:2]>/<sha1(name)>.png      (+ settings.json)

``digest`` hashes the method, every setting and the dataset's identity (class, folder, split,
image size), so changing any of them starts a new cache and never reuses a stale mask.
``name`` is the sample's path relative to the dataset's image folder (its index for embedded
data). ``cache_dir`` defaults to ``$HIRL_LIKE_CACHE/masks``, else ``$XDG_CACHE_HOME/hirl_like/masks``,
else ``~/.cache/hirl_like/masks``. Files are written atomically (temp file + rename), so data
loader workers may fill the cache concurrently.

``folder`` reads precomputed PNG masks laid out as the images: the mask of
``<image folder>/<relative path>.<ext>`` is ``<dir>/<relative path>.png`` (nonzero = foreground),
``dir`` defaulting to ``<image folder>_masks`` beside the image folder (the reference code's
``train`` -> mask folder swap). Every mask file must exist when the dataset is built, and each
mask must have its image's (upright) size: either failure is a clear error naming the path. A
mask is resized (nearest) to the image the dataset loads when the dataset resizes its images.

The options of each method (with their defaults) are :data:`METHOD_OPTIONS`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from hirl_like.data.mask_heuristics import felzenszwalb_foreground, saliency_foreground

MASK_METHODS = ("felzenszwalb", "saliency", "folder")
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "felzenszwalb": {"scale": 100.0, "sigma": 0.8, "min_size": 20, "center_fraction": 0.5, "cache_dir": None},
    "saliency": {"size": 64, "blur_sigma": 8.0, "threshold": 1.5, "cache_dir": None},
    "folder": {"dir": None},
}
_CACHE_FORMAT = 1  # bump when a heuristic's output changes for the same settings
_EXIF_ORIENTATION = 0x0112


def _number(value: Any, lo: float, *, integer: bool = False, lo_open: bool = False, hi: float | None = None) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    return (value > lo if lo_open else value >= lo) and (hi is None or value <= hi)


_CHECKS: dict[str, tuple[Any, str]] = {
    "scale": (lambda v: _number(v, 0, lo_open=True), "a number > 0"),
    "sigma": (lambda v: _number(v, 0), "a number >= 0"),
    "min_size": (lambda v: _number(v, 0, integer=True), "an int >= 0"),
    "center_fraction": (lambda v: _number(v, 0, lo_open=True, hi=1), "a number in (0, 1]"),
    "size": (lambda v: _number(v, 8, integer=True), "an int >= 8"),
    "blur_sigma": (lambda v: _number(v, 0), "a number >= 0"),
    "threshold": (lambda v: _number(v, 0), "a number >= 0"),
    "dir": (lambda v: v is None or (isinstance(v, str) and bool(v.strip())), "a folder path or null"),
    "cache_dir": (lambda v: v is None or (isinstance(v, str) and bool(v.strip())), "a folder path or null"),
}


def resolve_mask_options(masks: str | None, options: Mapping[str, Any] | None, where: str = "data") -> dict[str, Any]:
    """The method's settings: ``options`` checked (ValueError naming ``where.mask_options.KEY``) and
    completed by :data:`METHOD_OPTIONS`; {} when ``masks`` is None."""
    if masks is None:
        if options:
            raise ValueError(f"{where}.mask_options is set but {where}.masks is null; set {where}.masks to one of "
                             f"{', '.join(MASK_METHODS)} or drop mask_options.")
        return {}
    if masks not in MASK_METHODS:
        raise ValueError(f"{where}.masks={masks!r} is not one of {', '.join(MASK_METHODS)} (or null for no masks).")
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"{where}.mask_options must be a mapping of {masks}'s settings, got {options!r}.")
    allowed = METHOD_OPTIONS[masks]
    resolved = dict(allowed)
    for key, value in dict(options or {}).items():
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            raise ValueError(f"{where}.mask_options.{key} is not a setting of masks={masks}"
                             f"{'; did you mean ' + repr(close[0]) + '?' if close else '.'} It takes: {', '.join(allowed)}.")
        test, words = _CHECKS[key]
        if not test(value):
            raise ValueError(f"{where}.mask_options.{key}={value!r}: must be {words}.")
        resolved[key] = value
    return resolved


def default_cache_dir() -> str:
    """``$HIRL_LIKE_CACHE/masks``, else ``$XDG_CACHE_HOME/hirl_like/masks``, else ``~/.cache/hirl_like/masks``."""
    if os.environ.get("HIRL_LIKE_CACHE"):
        return os.path.join(os.environ["HIRL_LIKE_CACHE"], "masks")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hirl_like", "masks")


def upright_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file as decoded upright (EXIF orientation 5-8 swaps the sides)."""
    with Image.open(path) as img:
        w, h = img.size
        return (h, w) if img.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8) else (w, h)


def _write_png_atomic(mask: Image.Image, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    mask.save(tmp, format="PNG")
    os.replace(tmp, path)


class MaskSource:
    """The mask of each sample of one dataset: ``source(name, image) -> PIL "L" image`` of the
    image's size, 255 = foreground, 0 = background.

    Args:
        method: felzenszwalb | saliency | folder.
        options: ``mask_options`` (checked and completed by :func:`resolve_mask_options`).
        identity: what identifies the dataset's images (class, folder, split, image size), in the
            cache key of the computed methods.
        image_root: the folder the sample names are relative to (None for embedded data, which
            has no files: ``folder`` is then refused).
        names: every sample's name (its image path); ``folder`` checks every mask file exists.
    """

    def __init__(
        self,
        method: str,
        options: Mapping[str, Any] | None,
        identity: Mapping[str, Any],
        image_root: str | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        self.method = method
        self.options = resolve_mask_options(method, options)
        self.image_root = None if image_root is None else os.path.abspath(image_root)
        if method == "folder":
            if self.image_root is None:
                raise ValueError(f"data.masks=folder reads mask files beside image files; {identity.get('dataset')} "
                                 "has no image files. Use data.masks=felzenszwalb or saliency.")
            self.folder = os.path.abspath(self.options["dir"] or self.image_root.rstrip(os.sep) + "_masks")
            if names is not None:
                self._check_files(names)
        else:
            settings = {k: v for k, v in self.options.items() if k != "cache_dir"}
            key = {"format": _CACHE_FORMAT, "method": method, "settings": settings, "dataset": dict(identity)}
            text = json.dumps(key, sort_keys=True, default=str)
            root = self.options["cache_dir"] or default_cache_dir()
            self.folder = os.path.join(os.path.abspath(root), f"{method}-{hashlib.sha1(text.encode()).hexdigest()[:16]}")
            self._key_text = text

    # -- names and paths ------------------------------------------------------------------------
    def relative(self, name: str) -> str:
        return os.path.relpath(os.path.abspath(name), self.image_root) if self.image_root else name

    def mask_path(self, name: str) -> str:
        """Where sample ``name``'s mask is read (folder) or cached (computed methods)."""
        rel = self.relative(name)
        if self.method == "folder":
            return os.path.join(self.folder, os.path.splitext(rel)[0] + ".png")
        digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()
        return os.path.join(self.folder, digest[:2], digest + ".png")

    def _check_files(self, names: Sequence[str]) -> None:
        images = {os.path.abspath(n) for n in names}
        missing, clash = [], None
        for name in names:
            path = self.mask_path(name)
            if path in images:
                clash = clash or path
            elif not os.path.isfile(path):
                missing.append(path)
        if clash is not None:
            raise ValueError(f"the mask file {clash} is also one of the dataset's images; put the masks in a folder of "
                             "their own (data.mask_options.dir), not among the images.")
        if missing:
            raise FileNotFoundError(f"data.masks=folder: {len(missing)} of {len(names)} mask files are missing under "
                                    f"{self.folder}, first: {missing[0]} (the mask of an image <folder>/<path>.<ext> is "
                                    f"<mask dir>/<path>.png; set data.mask_options.dir).")

    # -- masks ----------------------------------------------------------------------------------
    def __call__(self, name: str, image: Image.Image) -> Image.Image:
        if self.method == "folder":
            return self._read_folder_mask(name, image)
        path = self.mask_path(name)
        if os.path.isfile(path):
            mask = self._open(path)
            if mask.size != image.size:
                raise ValueError(f"cached mask {path} is {mask.size[0]}x{mask.size[1]} but its image {name} is loaded at "
                                 f"{image.size[0]}x{image.size[1]}; delete {self.folder} to recompute the masks.")
            return mask
        mask = self.compute(image)
        if not os.path.isfile(os.path.join(self.folder, "settings.json")):
            os.makedirs(self.folder, exist_ok=True)
            tmp = os.path.join(self.folder, f"settings.json.tmp.{os.getpid()}")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self._key_text + "\n")
            os.replace(tmp, os.path.join(self.folder, "settings.json"))
        _write_png_atomic(mask, path)
        return mask

    def compute(self, image: Image.Image) -> Image.Image:
        """The heuristic mask of ``image`` (felzenszwalb / saliency), uncached."""
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        o = self.options
        if self.method == "felzenszwalb":
            fg = felzenszwalb_foreground(rgb, o["scale"], o["sigma"], o["min_size"], o["center_fraction"])
        else:
            fg = saliency_foreground(rgb, o["size"], o["blur_sigma"], o["threshold"])
        return Image.fromarray(fg.astype(np.uint8) * 255)

    @staticmethod
    def _open(path: str) -> Image.Image:
        try:
            with Image.open(path) as mask:
                return mask.convert("L")
        except Exception as err:  # PIL raises many types for a bad file
            raise ValueError(f"cannot read the mask file {path}: {type(err).__name__}: {err}") from None

    def _read_folder_mask(self, name: str, image: Image.Image) -> Image.Image:
        path = self.mask_path(name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data.masks=folder: the mask file {path} of image {name} is missing.")
        mask = self._open(path)
        expected = upright_size(name) if os.path.isfile(name) else image.size
        if mask.size != expected:
            raise ValueError(f"the mask {path} is {mask.size[0]}x{mask.size[1]} but its image {name} is "
                             f"{expected[0]}x{expected[1]}; a mask must have its image's size.")
        if mask.size != image.size:  # the dataset resized the image (data.image_size)
            mask = mask.resize(image.size, Image.Resampling.NEAREST)
        return Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)

    def __repr__(self) -> str:
        return f"MaskSource({self.method}, {self.options}, folder={self.folder})"
