"""Any decoded PIL image -> an upright 8-bit RGB image: the one conversion every image reader uses.

Three things go wrong with a plain ``img.convert("RGB")``, and are handled here:

1. **Orientation.** Cameras store pixels as the sensor saw them and record the rotation in the EXIF
   Orientation tag (0x0112). :func:`PIL.ImageOps.exif_transpose` applies it, so a portrait photo is
   upright. An unreadable EXIF block leaves the pixels as stored (they are still a valid image;
   PIL's "Corrupt EXIF data" warning shows once per process).
2. **High bit depth.** PIL maps 16-bit ("I;16", "I;16B", "I;16L", "I;16N"), 32-bit integer ("I")
   and float ("F") images to 8 bits by clipping at 255, which saturates nearly every pixel of a
   16-bit scan. Here they are scaled linearly by the image's own range::

       out = round(255 * (x - min) / (max - min))        (min, max over the finite pixels)

   so the darkest pixel becomes 0, the brightest 255 and the order of pixel values is kept.
   A constant image has no range: 16-bit ones keep their place in the 16-bit range
   (``round(x / 257)``, so 65535 is white), "I" and "F" ones become ``clip(round(x), 0, 255)``.
   Non-finite float pixels: NaN and -inf become 0, +inf 255.
3. **Alpha and palettes.** "RGBA", "LA", "PA", premultiplied "RGBa"/"La", and palette ("P")
   images with a transparent colour are composited on **white** (:data:`ALPHA_BACKGROUND`), as a
   web page shows them: transparent logos and product shots are drawn for a white page, and
   ``convert("RGB")`` would instead expose whatever colour the transparent pixels happen to store
   (often black, hiding black text). "P" without transparency, "1", "L", "CMYK" (PIL's
   ``R = 255 * (1 - C) * (1 - K)``; embedded ICC profiles are not applied, as in torchvision and
   timm) and "YCbCr" use PIL's own conversion.

Modes PIL cannot turn into RGB raise ValueError (the decoder reports the image as corrupt).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

ALPHA_BACKGROUND = (255, 255, 255)  # white: what a browser shows behind a transparent image
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
HIGH_DEPTH_MODES = (*SIXTEEN_BIT_MODES, "I", "F")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def upright(img: Image.Image) -> Image.Image:
    """``img`` rotated/flipped as its EXIF Orientation tag says (in place; the tag is removed)."""
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # noqa: BLE001 - a malformed EXIF block: the pixels themselves are fine
        pass
    return img


def scale_to_uint8(values: np.ndarray, sixteen_bit: bool = False) -> np.ndarray:
    """Pixel values of any numeric dtype -> uint8 by the finite range (see the module docstring).

    ``sixteen_bit`` picks the constant-image rule: ``x / 257`` (16-bit data) or ``clip(x, 0, 255)``.
    """
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        return np.where(x == np.inf, 255, 0).astype(np.uint8)
    lo, hi = float(x[finite].min()), float(x[finite].max())
    if hi > lo:
        out = (np.clip(x, lo, hi) - lo) * (255.0 / (hi - lo))
    else:
        out = np.full_like(x, lo / 257.0 if sixteen_bit else lo)
    out = np.where(np.isnan(x) | (x == -np.inf), 0.0, np.where(x == np.inf, 255.0, out))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    values = np.asarray(img)  # I;16* -> uint16 (byte order handled by PIL), I -> int32, F -> float32
    return Image.fromarray(scale_to_uint8(values, sixteen_bit=img.mode in SIXTEEN_BIT_MODES), mode="L")


def _has_transparency(img: Image.Image) -> bool:
    return img.mode in ALPHA_MODES or (img.mode in ("P", "L", "RGB") and "transparency" in img.info)


def _composite_on_background(img: Image.Image) -> Image.Image:
    if img.mode == "La":  # PIL converts premultiplied grey+alpha only to "LA"
        img = img.convert("LA")
    rgba = img.convert("RGBA")  # premultiplied RGBa and palette transparency are resolved by PIL
    background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """A new upright 8-bit RGB image from a loaded PIL image of any mode (module docstring).

    ``img`` itself is rotated in place when its EXIF says so; the pixels returned never share
    memory with it.
    """
    img = upright(img)
    if img.mode in HIGH_DEPTH_MODES:
        return _high_depth_to_l(img).convert("RGB")
    if _has_transparency(img):
        return _composite_on_background(img)
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise ValueError(f"cannot convert an image of mode {img.mode!r} to RGB: {err}") from None
