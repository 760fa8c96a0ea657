"""Image-caption pairs listed in a CSV/TSV file: open_clip's ``--csv-img-key filepath
--csv-caption-key title --csv-separator "\\t"`` format.

::

    filepath	title
    images/000000000.jpg	a dog running on the beach
    /data/cc3m/000000001.jpg	"a quoted caption, with a separator inside"

- ``image_key`` / ``caption_key`` name the columns (header row required); other columns are ignored.
- ``separator`` defaults to a tab for ``*.tsv`` and a comma for ``*.csv`` (set it for other names).
  Standard CSV quoting applies (``"`` quotes a field that holds the separator or a newline).
- A relative image path is relative to ``image_root``, by default the folder holding the file;
  absolute paths are used as they are.
- Rows are never dropped: an empty/missing path or caption, or an image that does not decode,
  becomes a bad sample at load time, counted and reported (:mod:`hirl_like.data.bad_samples`).
  Without a tokenizer (a vision-only method) captions are optional: a missing one is no bad
  sample and the file needs no caption column.
  The file is parsed once at construction; paths and captions are kept as packed byte arrays
  (:class:`~hirl_like.data.caption_folder.PackedStrings`) so workers share them.
"""

from __future__ import annotations

import csv
import os
import sys

import numpy as np

from hirl_like.data.bad_samples import BadSampleError, clean_caption
from hirl_like.data.base import Transform
from hirl_like.data.caption_folder import ImageTextPairs, PackedStrings
from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.registry import DATASETS

DEFAULT_SEPARATORS = {".tsv": "\t", ".csv": ","}


@DATASETS.register("CsvCaptions")
class CsvCaptions(ImageTextPairs):
    """Rows of ``(image path, caption)`` from a CSV/TSV file (config key ``data.path``).

    Args:
        path: the CSV/TSV file.
        image_key: column of image paths (default "filepath", as open_clip).
        caption_key: column of captions (default "title", as open_clip).
        separator: field separator; None picks "\\t" for .tsv and "," for .csv.
        image_root: folder that relative image paths start from; None = the file's folder.
        transform, tokenizer, seed, caption_noise, max_bad_fraction, max_bad_samples: see
            :class:`~hirl_like.data.caption_folder.ImageTextPairs`.
    """

    def __init__(
        self,
        path: str,
        image_key: str = "filepath",
        caption_key: str = "title",
        separator: str | None = None,
        image_root: str | None = None,
        transform: Transform | None = None,
        tokenizer: ClipTokenizer | None = None,
        caption_noise: float = 0.0,
        seed: int = 0,
        max_bad_fraction: float = 0.01,
        max_bad_samples: int | None = None,
    ) -> None:
        super().__init__(
            transform=transform, tokenizer=tokenizer, caption_noise=caption_noise, seed=seed,
            max_bad_fraction=max_bad_fraction, max_bad_samples=max_bad_samples,
        )
        if not isinstance(path, str) or not path:
            raise ValueError(f"path must be a CSV/TSV file path (config key data.path), got {path!r}")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"caption file {path!r} does not exist. Set the config key data.path to a CSV/TSV file with "
                f"columns {image_key!r} (image path) and {caption_key!r} (caption)."
            )
        if separator is None:
            ext = os.path.splitext(path)[1].lower()
            if ext not in DEFAULT_SEPARATORS:
                raise ValueError(
                    f"cannot guess the separator of {path!r} (not .csv or .tsv); set data.separator, "
                    "e.g. data.separator=',' or a tab"
                )
            separator = DEFAULT_SEPARATORS[ext]
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"separator must be one character (data.separator), got {separator!r}")
        if image_root is not None and not os.path.isdir(image_root):
            raise FileNotFoundError(
                f"image_root {image_root!r} does not exist; set data.image_root to the folder that the "
                f"relative paths in {path!r} start from (or null for the file's folder)"
            )
        self.path = os.path.abspath(path)
        self.image_key = image_key
        self.caption_key = caption_key
        self.separator = separator
        self.image_root = os.path.abspath(image_root) if image_root is not None else os.path.dirname(self.path)
        paths, captions, missing = self._parse()
        if not paths:
            raise ValueError(f"{path!r} has a header but no rows; data.path must list at least one image")
        self._images = PackedStrings(paths)
        self._captions = PackedStrings(captions)
        self._caption_missing = np.asarray(missing, dtype=bool)
        self._check_noise()

    def _parse(self) -> tuple[list[str], list[str], list[bool]]:
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long captions exceed the 128 KiB default
        paths: list[str] = []
        captions: list[str] = []
        missing: list[bool] = []
        with open(self.path, newline="", encoding="utf-8-sig", errors="replace") as f:
            reader = csv.reader(f, delimiter=self.separator)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{self.path!r} is empty; it needs a header row naming the columns")
            header = [h.strip() for h in header]
            needed = [(self.image_key, "image_key")] + [(self.caption_key, "caption_key")] * self.captions_required
            for key, name in needed:
                if key not in header:
                    raise ValueError(
                        f"column {key!r} not in {self.path!r} (columns: {header}, separator {self.separator!r}); "
                        f"set data.{name} (and data.separator if the columns look merged)"
                    )
            img_col = header.index(self.image_key)
            cap_col = header.index(self.caption_key) if self.caption_key in header else len(header) + 1
            for row in reader:
                if not row:
                    continue  # a blank line is not a row
                paths.append(row[img_col].strip() if img_col < len(row) else "")
                has_cap = cap_col < len(row)
                captions.append(row[cap_col] if has_cap else "")
                missing.append(not has_cap)
        return paths, captions, missing

    def image_path(self, index: int) -> str:
        rel = self._images[index]
        if not rel:
            return ""  # decode_image reports it as missing_file
        return rel if os.path.isabs(rel) else os.path.join(self.image_root, rel)

    def sample_name(self, index: int) -> str:
        return self.image_path(index) or f"{self.path} row {index + 2} (empty {self.image_key!r})"

    def raw_caption(self, index: int) -> str:
        if self._caption_missing[index]:
            raise BadSampleError("missing_caption", f"row {index + 2} has no {self.caption_key!r} field")
        return clean_caption(self._captions[index])
