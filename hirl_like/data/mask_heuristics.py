"""Unsupervised foreground masks of one image, for HARL (:mod:`hirl_like.data.masks` caches them).

Both take an RGB image as a uint8 array (H, W, 3) and return a bool array (H, W), True = foreground.

**felzenszwalb** (:func:`felzenszwalb_foreground`): ``skimage.segmentation.felzenszwalb(image,
scale, sigma, min_size)`` over-segments the image; the *centre box* is the middle
``center_fraction`` of the height and of the width (rows ``floor(H (1 - c) / 2)`` to
``ceil(H (1 + c) / 2)``, columns alike; c = 0.5: the middle quarter of the area). A segment is
foreground when it overlaps the centre box more than a segment spread evenly over the image
would: ``|segment ∩ box| / |segment| > |box| / (H W)``. A background region that reaches into the
centre from the borders then stays background (most of it lies outside the box), while an object
around the centre is foreground whatever its size. When no segment qualifies (one segment
covering everything), the segment under the centre pixel ``(H // 2, W // 2)`` is the foreground.

**saliency** (:func:`saliency_foreground`): the spectral-residual saliency of Hou & Zhang (CVPR
2007). The grey image is resized to ``size`` x ``size`` (bilinear; the paper: width 64) and, as a
choice of ours, mirror-padded by ``size // 2`` on every side (without it the FFT's wrap-around
makes the image borders salient); with ``A`` the log amplitude and ``P`` the phase of its 2-D
FFT, the residual is ``R = A - mean3x3(A)`` and the saliency ``S = gauss_sigma(|IFFT(exp(R + iP))|^2)``
(``blur_sigma`` pixels at that size, 8 by default), cropped back to the image, scaled to [0, 1] and
resized to (H, W) (bilinear). Foreground is ``S > threshold * mean(S)``; the default 1.5 is ours
(the paper's object map uses 3, which at this blur keeps ~1% of the image). A uniform image has
no foreground (an empty mask is allowed: HARL's pooling then gives the zero vector).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def centre_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1), half-open: the middle ``fraction`` of each side (at least 1 pixel)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"center_fraction must be in (0, 1], got {fraction!r}.")
    r0, r1 = math.floor(height * (1 - fraction) / 2), math.ceil(height * (1 + fraction) / 2)
    c0, c1 = math.floor(width * (1 - fraction) / 2), math.ceil(width * (1 + fraction) / 2)
    return r0, max(r1, r0 + 1), c0, max(c1, c0 + 1)


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}.")
    return image


def centre_segments(segments: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """(H, W) int labels -> (H, W) bool: the union of the segments concentrated on the centre box
    (module docstring), or the centre pixel's segment when none is."""
    h, w = segments.shape
    r0, r1, c0, c1 = centre_box(h, w, fraction)
    labels = segments.ravel()
    size = np.bincount(labels)
    inside = np.bincount(segments[r0:r1, c0:c1].ravel(), minlength=len(size))
    box_share = (r1 - r0) * (c1 - c0) / (h * w)
    chosen = inside > box_share * size  # |seg ∩ box| / |seg| > |box| / |image|, without division
    if not chosen.any():
        chosen[segments[h // 2, w // 2]] = True
    return chosen[segments]


def felzenszwalb_foreground(
    image: np.ndarray, scale: float = 100.0, sigma: float = 0.8, min_size: int = 20, center_fraction: float = 0.5
) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> bool (H, W): Felzenszwalb segments concentrated on the centre box."""
    from skimage.segmentation import felzenszwalb  # local: only mask computation needs scikit-image

    segments = felzenszwalb(_rgb(image), scale=scale, sigma=sigma, min_size=int(min_size), channel_axis=-1)
    return centre_segments(np.asarray(segments, dtype=np.int64), center_fraction)


def spectral_residual_saliency(image: np.ndarray, size: int = 64, blur_sigma: float = 8.0) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (H, W) saliency in [0, 1] (Hou & Zhang 2007; module docstring)."""
    from scipy.ndimage import gaussian_filter, uniform_filter  # local: scikit-image's dependency

    h, w = _rgb(image).shape[:2]
    grey = Image.fromarray(image).convert("L").resize((size, size), Image.Resampling.BILINEAR)
    pad = size // 2
    spectrum = np.fft.fft2(np.pad(np.asarray(grey, dtype=np.float64), pad, mode="reflect"))
    log_amplitude = np.log(np.abs(spectrum) + 1e-8)
    residual = log_amplitude - uniform_filter(log_amplitude, size=3, mode="nearest")
    saliency = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    saliency = gaussian_filter(saliency, sigma=blur_sigma, mode="nearest")[pad : pad + size, pad : pad + size]
    lo, hi = float(saliency.min()), float(saliency.max())
    saliency = (saliency - lo) / (hi - lo) if hi > lo else np.zeros_like(saliency)
    full = Image.fromarray(saliency.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(full, dtype=np.float32)


def saliency_foreground(image: np.ndarray, size: int = 64, blur_sigma: float = 8.0, threshold: float = 1.5) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> bool (H, W): ``saliency > threshold * mean(saliency)``."""
    saliency = spectral_residual_saliency(image, size, blur_sigma)
    mean = float(saliency.mean())
    return saliency > threshold * mean if mean > 0 else np.zeros(saliency.shape, dtype=bool)
