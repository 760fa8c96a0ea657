"""The image decoder every image-reading dataset uses: bytes or a path -> upright 8-bit RGB, or a
:class:`~hirl_like.data.bad_samples.BadSampleError` saying why not.

``ImageFolder``, ``ImageCaptionFolder``, ``CsvCaptions`` and ``WebDatasetShards`` all call
:func:`decode_image`, so an image looks the same whichever layout holds it, and the data check
(``tools/check_data.py``) finds exactly the images training would skip.

Steps: size check (a missing or zero-byte file has its own reason), ``Image.open`` + ``load``
(every pixel is decoded now, so a truncated file fails here instead of being padded with grey,
unless some library set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True``), then
:func:`hirl_like.data.rgb.to_rgb` (EXIF orientation, 16-bit/float scaling, alpha on white,
palette/CMYK/1-bit conversion).
"""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image, UnidentifiedImageError

from hirl_like.data.bad_samples import BadSampleError
from hirl_like.data.rgb import to_rgb


def classify_decode_error(err: BaseException) -> str:
    """The :data:`~hirl_like.data.bad_samples.REASONS` entry for an exception raised while decoding."""
    if isinstance(err, Image.DecompressionBombError):
        return "too_large"
    if isinstance(err, UnidentifiedImageError):
        return "corrupt"
    if "truncated" in str(err).lower():  # PIL: "image file is truncated (N bytes not processed)"
        return "truncated"
    return "corrupt"


def _source(data: bytes | bytearray | memoryview | str | os.PathLike) -> Any:
    """A file path or a BytesIO for ``Image.open``; BadSampleError for a missing or empty file."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) == 0:
            raise BadSampleError("empty_file", "0 bytes")
        return io.BytesIO(bytes(data))
    path = os.fspath(data)
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise BadSampleError("missing_file", "no such file") from None
    except OSError as err:
        raise BadSampleError("missing_file", str(err)) from None
    if size == 0:
        raise BadSampleError("empty_file", "0 bytes")
    return path


def decode_image(data: bytes | bytearray | memoryview | str | os.PathLike) -> Image.Image:
    """Bytes or a file path -> a fully decoded, upright 8-bit RGB image; BadSampleError otherwise."""
    source = _source(data)
    try:
        with Image.open(source) as img:
            img.load()
            return to_rgb(img)
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, struct.error, ... for bad data
        raise BadSampleError(classify_decode_error(err), f"{type(err).__name__}: {err}") from None
