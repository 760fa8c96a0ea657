"""Multi-crop views that carry a per-image mask along (HARL): the crop and flips of each view are
drawn once and applied to the image and to its mask alike, so the mask stays on its pixels.

``MaskedMultiCropTransform(img, mask)`` returns what :class:`~hirl_like.data.transforms.MultiCropTransform`
returns plus ``"global_masks"`` / ``"local_masks"``: one float32 (1, S, S) tensor per crop,
1 = foreground (any nonzero mask pixel), 0 = background. Called without a mask it returns exactly
what ``MultiCropTransform`` returns for the same random state (the same draws in the same order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from hirl_like.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, MultiCropTransform, _prob
from hirl_like.registry import TRANSFORMS


class PairedCropFlip:
    """One view's geometry for an image and its mask: RandomResizedCrop parameters drawn once
    (``crop.get_params``, as ``crop`` itself draws them), the image resized with ``crop``'s
    interpolation, the mask with nearest; then a horizontal flip with probability ``hflip``
    (one ``torch.rand(1)`` always drawn, as ``RandomHorizontalFlip``) and, when ``vflip > 0``, a
    vertical flip with probability ``vflip``, both applied to image and mask."""

    def __init__(self, crop: T.RandomResizedCrop, hflip: float, vflip: float = 0.0) -> None:
        self.crop, self.hflip, self.vflip = crop, hflip, vflip

    def __call__(self, img: Image.Image, mask: Image.Image | None) -> tuple[Image.Image, Image.Image | None]:
        c = self.crop
        i, j, h, w = c.get_params(img, c.scale, c.ratio)
        img = TF.resized_crop(img, i, j, h, w, c.size, c.interpolation, antialias=c.antialias)
        if mask is not None:
            mask = TF.resized_crop(mask, i, j, h, w, c.size, InterpolationMode.NEAREST)
        flips = [torch.rand(1).item() < self.hflip]
        if self.vflip > 0:
            flips.append(torch.rand(1).item() < self.vflip)
        for flip, op in zip(flips, (TF.hflip, TF.vflip)):
            if flip:
                img = op(img)
                mask = op(mask) if mask is not None else None
        return img, mask


def _split(compose: T.Compose, vflip: float) -> tuple[PairedCropFlip, T.Compose]:
    """MultiCropTransform's per-view Compose -> (its crop + flip as a paired op, the image-only rest)."""
    steps = list(compose.transforms)
    if not (isinstance(steps[0], T.RandomResizedCrop) and isinstance(steps[1], T.RandomHorizontalFlip)):
        raise TypeError(f"expected RandomResizedCrop then RandomHorizontalFlip first in {compose}")
    return PairedCropFlip(steps[0], steps[1].p, vflip), T.Compose(steps[2:])


def mask_tensor(mask: Image.Image) -> torch.Tensor:
    """PIL mask -> float32 (1, H, W), 1 where the mask is nonzero."""
    return torch.from_numpy((np.asarray(mask.convert("L")) > 0).astype(np.float32))[None]


@TRANSFORMS.register()
class MaskedMultiCropTransform(MultiCropTransform):
    """:class:`~hirl_like.data.transforms.MultiCropTransform` (same arguments and views) whose
    global and local crops take the image's mask along: ``(img, mask) -> {"global_crops",
    "global_masks", "local_crops", "local_masks", "simclr_views"}`` (SimCLR views get no mask).

    ``vflip``: probability of a vertical flip of image and mask after the horizontal one (0, as
    BYOL's recipe, which the HARL paper follows; HARL's reference mask transform also flips
    vertically with probability 0.5). The colour jitter, grayscale, blur and solarize of each view
    touch the image only.

    The dataset passes the mask when ``data.masks`` is set (it checks ``takes_mask``).
    """

    takes_mask = True

    def __init__(
        self,
        global_crops: int = 2,
        local_crops: int = 0,
        global_size: int = 224,
        local_size: int = 96,
        global_scale: Sequence[float] = (0.32, 1.0),
        local_scale: Sequence[float] = (0.05, 0.32),
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        simclr_views: int = 0,
        simclr_scale: Sequence[float] = (0.08, 1.0),
        hflip: float = 0.5,
        color_jitter_p: float = 0.8,
        vflip: float = 0.0,
    ) -> None:
        super().__init__(global_crops, local_crops, global_size, local_size, global_scale, local_scale, mean, std,
                         simclr_views, simclr_scale, hflip, color_jitter_p)
        self.vflip = _prob("vflip", vflip)
        self._global = [_split(self.global_transform_1, self.vflip), _split(self.global_transform_2, self.vflip)]
        self._local = _split(self.local_transform, self.vflip)

    @staticmethod
    def _view(pair: tuple[PairedCropFlip, T.Compose], img: Image.Image, mask: Image.Image | None) -> tuple[Any, Any]:
        geometry, photometric = pair
        img, mask = geometry(img, mask)
        return photometric(img), (mask_tensor(mask) if mask is not None else None)

    def __call__(self, img: Image.Image, mask: Image.Image | None = None) -> dict[str, list[torch.Tensor]]:
        if mask is not None and mask.size != img.size:
            raise ValueError(f"mask size {mask.size} differs from image size {img.size}.")
        out: dict[str, list[torch.Tensor]] = {}
        views = [("global", self._global[min(k, 1)]) for k in range(self.num_global)]
        views += [("local", self._local)] * self.num_local
        for kind, pair in views:
            crop, crop_mask = self._view(pair, img, mask)
            out.setdefault(f"{kind}_crops", []).append(crop)
            if crop_mask is not None:
                out.setdefault(f"{kind}_masks", []).append(crop_mask)
        if self.num_simclr:
            out["simclr_views"] = [self.simclr_transform(img) for _ in range(self.num_simclr)]
        return out

    def __repr__(self) -> str:
        return super().__repr__().replace("MultiCropTransform(", "MaskedMultiCropTransform(", 1)[:-1] + f", vflip={self.vflip})"
