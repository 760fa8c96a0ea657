"""View transforms: PIL RGB image -> dict of normalised tensors.

- :class:`MultiCropTransform`: the DINO/iBOT multi-crop recipe used by Harmony (global crops for
  the teacher, CLIP and MAE; local crops for the student) plus optional SLIP SimCLR views.
- :class:`RandomResizedCropTransform`: plain crops + flip (MAE: scale (0.2, 1); open_clip's CLIP:
  scale (0.9, 1), no flip).
- :class:`EvalTransform`: resize the shorter side, centre crop.

All randomness comes from torch's CPU generator (torchvision v1 transforms and the blur below),
which :class:`~hirl_like.data.base.ImageCaptionDataset` seeds per sample from (seed, epoch, index).

Gaussian blur: the recipe draws the PIL blur radius from U(0.1, 2.0) pixels for 224-px global
crops. A radius is an absolute pixel size, so on 32-px images it would wipe out the content; we
scale the radius by ``global_size / 224`` (the image resolution relative to the recipe's) for every
view of a transform. At ``global_size = 224`` this is exactly the DINO/iBOT/SLIP recipe (local
crops included); at 32 px the radius is U(0.014, 0.29) px.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from hirl_like.registry import TRANSFORMS

# timm.data.constants values, repeated here so that importing the data layer does not import timm.
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
# The resolution at which the blur radius range of the recipe is defined.
RECIPE_RESOLUTION = 224


class RandomGaussianBlur:
    """With probability ``p``, PIL Gaussian blur with radius ~ U(radius_min, radius_max) * radius_scale.

    Draws from torch's generator (not Python's ``random``, unlike DINO's version) so one seed fixes all views.
    """

    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0, radius_scale: float = 1.0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"blur probability must be in [0, 1], got {p}")
        if not 0.0 <= radius_min <= radius_max:
            raise ValueError(f"blur radius range must satisfy 0 <= min <= max, got ({radius_min}, {radius_max})")
        self.p = p
        self.radius_min = radius_min
        self.radius_max = radius_max
        self.radius_scale = radius_scale

    def __call__(self, img: Image.Image) -> Image.Image:
        # Always draw both numbers, so the stream consumed does not depend on the coin flip.
        coin = torch.rand(()).item()
        u = torch.rand(()).item()
        if coin >= self.p:
            return img
        radius = (self.radius_min + u * (self.radius_max - self.radius_min)) * self.radius_scale
        return img.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return (
            f"RandomGaussianBlur(p={self.p}, radius=U({self.radius_min}, {self.radius_max})"
            f" x {self.radius_scale:.3g})"
        )


# -- argument checks ------------------------------------------------------------------------------
def _size(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int (pixels), got {value!r}")
    return value


def _count(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def _scale(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair [min, max] of area fractions, got {value!r}") from None
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {value!r}")
    return lo, hi


def _stats(name: str, value: Any, positive: bool = False) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or (positive and min(out) <= 0):
        raise ValueError(f"{name} must be 3 floats (one per RGB channel){' > 0' if positive else ''}, got {value!r}")
    return out  # type: ignore[return-value]


def _prob(name: str, value: Any) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _normalize(mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    return [T.ToTensor(), T.Normalize(mean, std)]


# -- transforms -----------------------------------------------------------------------------------
@TRANSFORMS.register()
class MultiCropTransform:
    """DINO/iBOT multi-crop (+ SLIP SimCLR views): image -> dict of lists of Tensor (3, S, S).

    Returns ``{"global_crops": [global_crops x (3, gs, gs)], "local_crops": [local_crops x (3, ls, ls)],
    "simclr_views": [simclr_views x (3, gs, gs)]}``; keys with zero views are left out.

    Global/local crops (iBOT/DINO): RandomResizedCrop (bicubic), flip 0.5, colour jitter
    (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2; then blur p 1.0 on global crop 1; blur p 0.1 and
    solarize p 0.2 on global crop 2 and any further global crop; blur p 0.5 on local crops.
    SimCLR views (SLIP): RandomResizedCrop scale ``simclr_scale`` (bilinear, as SLIP), jitter
    (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale p 0.2, blur p 0.5, flip 0.5.
    Blur radius U(0.1, 2.0) x global_size/224 (see module docstring).

    ``hflip`` and ``color_jitter_p`` (0.5 and 0.8 in the recipe) set the flip and colour-jitter
    probabilities of the global and local crops; 0 turns them off, e.g. for digits, whose mirror
    images are not digits and whose jittered backgrounds vary more than the digits themselves.
    """

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
    ) -> None:
        self.num_global = _count("global_crops", global_crops)
        self.num_local = _count("local_crops", local_crops)
        self.num_simclr = _count("simclr_views", simclr_views)
        if self.num_global + self.num_local + self.num_simclr == 0:
            raise ValueError(
                "MultiCropTransform needs at least one view: set global_crops, local_crops or simclr_views > 0"
            )
        self.global_size = _size("global_size", global_size)
        self.local_size = _size("local_size", local_size)
        self.global_scale = _scale("global_scale", global_scale)
        self.local_scale = _scale("local_scale", local_scale)
        self.simclr_scale = _scale("simclr_scale", simclr_scale)
        self.mean = _stats("mean", mean)
        self.std = _stats("std", std, positive=True)
        self.blur_radius_scale = self.global_size / RECIPE_RESOLUTION
        self.hflip = _prob("hflip", hflip)
        self.color_jitter_p = _prob("color_jitter_p", color_jitter_p)

        norm = _normalize(self.mean, self.std)
        r = self.blur_radius_scale

        def dino_base(size: int, scale: tuple[float, float]) -> list[Any]:
            return [
                T.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(p=self.hflip),
                T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=self.color_jitter_p),
                T.RandomGrayscale(p=0.2),
            ]

        self.global_transform_1 = T.Compose(
            [*dino_base(self.global_size, self.global_scale), RandomGaussianBlur(1.0, radius_scale=r), *norm]
        )
        self.global_transform_2 = T.Compose(
            [
                *dino_base(self.global_size, self.global_scale),
                RandomGaussianBlur(0.1, radius_scale=r),
                T.RandomSolarize(threshold=128, p=0.2),
                *norm,
            ]
        )
        self.local_transform = T.Compose(
            [*dino_base(self.local_size, self.local_scale), RandomGaussianBlur(0.5, radius_scale=r), *norm]
        )
        self.simclr_transform = T.Compose(
            [
                T.RandomResizedCrop(
                    self.global_size, scale=self.simclr_scale, interpolation=InterpolationMode.BILINEAR
                ),
                T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                RandomGaussianBlur(0.5, radius_scale=r),
                T.RandomHorizontalFlip(p=0.5),
                *norm,
            ]
        )

    def __call__(self, img: Image.Image) -> dict[str, list[torch.Tensor]]:
        out: dict[str, list[torch.Tensor]] = {}
        if self.num_global:
            out["global_crops"] = [
                (self.global_transform_1 if k == 0 else self.global_transform_2)(img) for k in range(self.num_global)
            ]
        if self.num_local:
            out["local_crops"] = [self.local_transform(img) for _ in range(self.num_local)]
        if self.num_simclr:
            out["simclr_views"] = [self.simclr_transform(img) for _ in range(self.num_simclr)]
        return out

    def __repr__(self) -> str:
        return (
            f"MultiCropTransform(global={self.num_global}x{self.global_size}px {self.global_scale}, "
            f"local={self.num_local}x{self.local_size}px {self.local_scale}, "
            f"simclr={self.num_simclr}x{self.global_size}px {self.simclr_scale}, "
            f"hflip={self.hflip}, color_jitter_p={self.color_jitter_p})"
        )


@TRANSFORMS.register()
class RandomResizedCropTransform:
    """``crops`` x (RandomResizedCrop (bicubic) + flip p ``hflip``) -> ``{"global_crops": [Tensor (3, size, size)]}``.

    MAE: ``scale=(0.2, 1.0)``, ``hflip=0.5``. open_clip's CLIP training: ``scale=(0.9, 1.0)``, ``hflip=0``.
    """

    def __init__(
        self,
        size: int = 224,
        scale: Sequence[float] = (0.08, 1.0),
        crops: int = 1,
        hflip: float = 0.5,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        self.size = _size("size", size)
        self.scale = _scale("scale", scale)
        self.crops = _count("crops", crops)
        if self.crops == 0:
            raise ValueError("crops must be >= 1")
        self.hflip = _prob("hflip", hflip)
        self.mean = _stats("mean", mean)
        self.std = _stats("std", std, positive=True)
        steps: list[Any] = [T.RandomResizedCrop(self.size, scale=self.scale, interpolation=InterpolationMode.BICUBIC)]
        if self.hflip > 0:
            steps.append(T.RandomHorizontalFlip(p=self.hflip))
        self.transform = T.Compose([*steps, *_normalize(self.mean, self.std)])

    def __call__(self, img: Image.Image) -> dict[str, list[torch.Tensor]]:
        return {"global_crops": [self.transform(img) for _ in range(self.crops)]}

    def __repr__(self) -> str:
        return (
            f"RandomResizedCropTransform(size={self.size}, scale={self.scale}, crops={self.crops}, "
            f"hflip={self.hflip})"
        )


@TRANSFORMS.register()
class EvalTransform:
    """Resize the shorter side to ``resize_size`` (default ``size``; bicubic), centre crop ``size``.

    Returns ``{"image": Tensor (3, size, size)}``. For ImageNet-style evaluation use size 224, resize 256.
    """

    def __init__(
        self,
        size: int = 224,
        resize_size: int | None = None,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        self.size = _size("size", size)
        self.resize_size = self.size if resize_size is None else _size("resize_size", resize_size)
        if self.resize_size < self.size:
            raise ValueError(f"resize_size ({self.resize_size}) must be >= size ({self.size}) to centre-crop")
        self.mean = _stats("mean", mean)
        self.std = _stats("std", std, positive=True)
        self.transform = T.Compose(
            [
                T.Resize(self.resize_size, interpolation=InterpolationMode.BICUBIC),
                T.CenterCrop(self.size),
                *_normalize(self.mean, self.std),
            ]
        )

    def __call__(self, img: Image.Image) -> dict[str, torch.Tensor]:
        return {"image": self.transform(img)}

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, resize_size={self.resize_size})"
