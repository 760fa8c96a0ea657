"""The two fine-tuning recipes (ViT: BEiT / iBOT / MAE; ResNet: SimCLR / BYOL) and their training views.

ViT (BEiT, Bao et al. 2022, Appendix; iBOT and MAE fine-tune with the same code):
    AdamW, betas (0.9, 0.999); base lr 5e-4 per 256 images (MAE's / iBOT's ViT-B value; the lr used
    is base x global batch / 256, as BEiT scales it); layer-wise lr decay 0.65 (timm's
    ``param_groups_layer_decay``); weight decay 0.05 (none on biases, norms, [CLS], position
    embeddings); drop path 0.1; 100 epochs, 5 of linear warm-up, then cosine to 1e-6, per
    iteration; mixup 0.8, cutmix 1.0 (switch 0.5, on every batch), label smoothing 0.1 (timm's
    ``Mixup`` + ``SoftTargetCrossEntropy``); RandAugment 'rand-m9-mstd0.5-inc1', random erasing
    0.25 (pixel mode), bicubic random resized crops.

ResNet (the "lighter" practice of the SSL papers that fine-tune a ResNet classifier: SimCLR,
Chen et al. 2020, Appendix B.5; BYOL's semi-supervised protocol is the same apart from its lr grid):
    SGD, momentum 0.9, Nesterov; base lr 0.05 per 256 images (SimCLR: "0.05 x BatchSize / 256"),
    no warm-up, cosine to 0 per iteration; no weight decay, no layer decay, no drop path, no
    mixup / cutmix / label smoothing, no RandAugment or erasing: random resized crops (+ flip)
    only. 60 epochs (SimCLR's 1%-label budget; it uses 30 at 10%).

Adapted for the small grey images here (32-px digits and Fashion-MNIST), both recipes:
    - crops: scale (0.08, 1) is the recipes'; below 96 px it becomes (0.5, 1): an 8% crop of a
      32-px digit (upsampled from 8x8) is a few original pixels of stroke, and even a quarter of
      the area cuts strokes off (CLIP quickstart export, 10% of the digits labels, 100
      iterations, crops alone: 63.1% top-1 at (0.5, 1) vs 60.8% at (0.25, 1));
    - no colour jitter (RandAugment's brightness / contrast / sharpness remain; saturation and hue
      do nothing to a grey image), as timm does whenever RandAugment is on;
    - horizontal flips with the pre-training config's ``transform.hflip`` when it sets one (the
      quickstart configs say whether a mirrored image keeps its class: a mirrored digit is not a
      digit), else the recipes' 0.5;
    - RandAugment's translation is relative to the image (timm: 0.45 x side), so it scales down;
    - grey data (R = G = B, :func:`is_grey`): random erasing's noise is made grey too.
The mean / std are those of the evaluation transform (ImageNet's), so the fine-tuned backbone
sees its inputs normalised as in pre-training and evaluation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from hirl_like.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

SMALL_IMAGE = 96  # below this side, the crop scale of small images is used
SMALL_IMAGE_CROP_SCALE = (0.5, 1.0)
RECIPE_CROP_SCALE = (0.08, 1.0)


@dataclass(frozen=True)
class FineTuneRecipe:
    """Every setting of a fine-tuning run (the defaults of one recipe, with the flags applied).

    ``base_lr`` is per 256 images: the optimiser's peak lr is ``base_lr * global_batch / 256``.
    ``layer_decay`` None: no layer-wise decay (every parameter at the peak lr). ``auto_augment``
    None: no RandAugment. Mixup is on when ``mixup`` or ``cutmix`` is > 0.
    """

    name: str
    optimizer: str  # "adamw" | "sgd"
    base_lr: float
    epochs: int
    warmup_epochs: float
    min_lr: float
    weight_decay: float
    layer_decay: float | None
    drop_path: float
    mixup: float
    cutmix: float
    mixup_prob: float
    mixup_switch_prob: float
    label_smoothing: float
    auto_augment: str | None
    re_prob: float
    crop_scale: tuple[float, float]
    hflip: float
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    head_init_std: float = 0.01
    grey: bool = False  # the images are grey: random erasing fills with grey noise, not colour noise

    @property
    def uses_mixup(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}.")
        if self.base_lr <= 0 or self.min_lr < 0:
            raise ValueError(f"the learning rate must be > 0 and min_lr >= 0, got lr={self.base_lr}, min_lr={self.min_lr}.")
        if self.epochs < 1 or not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"epochs must be >= 1 and warmup_epochs in [0, epochs], got {self.epochs} and {self.warmup_epochs}.")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}.")
        for key in ("re_prob", "hflip", "mixup_prob", "mixup_switch_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key} must be a probability in [0, 1], got {getattr(self, key)}.")
        for key in ("drop_path", "label_smoothing"):  # 1 would drop every block / erase every label
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)}.")
        if self.mixup < 0 or self.cutmix < 0 or self.weight_decay < 0:
            raise ValueError("mixup, cutmix (Beta parameters) and weight_decay must be >= 0.")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}.")


VIT_RECIPE = FineTuneRecipe(
    name="vit (BEiT/iBOT)", optimizer="adamw", base_lr=5e-4, epochs=100, warmup_epochs=5, min_lr=1e-6,
    weight_decay=0.05, layer_decay=0.65, drop_path=0.1, mixup=0.8, cutmix=1.0, mixup_prob=1.0,
    mixup_switch_prob=0.5, label_smoothing=0.1, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25,
    crop_scale=RECIPE_CROP_SCALE, hflip=0.5, head_init_std=2e-5,  # MAE: trunc_normal_(head.weight, std=2e-5)
)
RESNET_RECIPE = FineTuneRecipe(
    name="resnet (SimCLR/BYOL)", optimizer="sgd", base_lr=0.05, epochs=60, warmup_epochs=0, min_lr=0.0,
    weight_decay=0.0, layer_decay=None, drop_path=0.0, mixup=0.0, cutmix=0.0, mixup_prob=1.0,
    mixup_switch_prob=0.5, label_smoothing=0.0, auto_augment=None, re_prob=0.0,
    crop_scale=RECIPE_CROP_SCALE, hflip=0.5, nesterov=True, head_init_std=0.01,  # MoCo's linear head init
)


def default_recipe(is_vit: bool, image_size: int, hflip: float | None = None, **changes: Any) -> FineTuneRecipe:
    """The ViT or ResNet recipe at ``image_size`` (small images: the smaller crop scale), with
    ``hflip`` (None: the recipe's 0.5) and then ``changes`` (keys of :class:`FineTuneRecipe`;
    None values are ignored, so unset flags keep the recipe's value)."""
    recipe = VIT_RECIPE if is_vit else RESNET_RECIPE
    small = {"crop_scale": SMALL_IMAGE_CROP_SCALE} if image_size < SMALL_IMAGE else {}
    flip = {"hflip": float(hflip)} if hflip is not None else {}
    return replace(recipe, **small, **flip, **{k: v for k, v in changes.items() if v is not None})


class TrainTransform:
    """timm's training transform as the toolbox's datasets want it: PIL image -> {"image": (3, S, S)}.

    ``timm.data.create_transform(is_training=True)`` with the recipe's crop scale, flip,
    RandAugment and random erasing, bicubic interpolation, no colour jitter, the evaluation
    mean / std. Its randomness (Python's ``random``, NumPy, torch) is seeded per sample by the
    dataset, so a run is repeatable.
    """

    def __init__(self, recipe: FineTuneRecipe, size: int,
                 mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN, std: tuple[float, ...] = IMAGENET_DEFAULT_STD) -> None:
        from timm.data import create_transform  # local: the data layer does not import timm

        self.size = int(size)
        self.grey = recipe.grey
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.transform = create_transform(
            input_size=self.size, is_training=True, scale=tuple(recipe.crop_scale), hflip=recipe.hflip,
            color_jitter=None, auto_augment=recipe.auto_augment, interpolation="bicubic",
            re_prob=recipe.re_prob, re_mode="pixel", re_count=1, mean=tuple(mean), std=tuple(std),
        )

        _patch_posterize(self.transform)

    def __call__(self, img: Image.Image) -> dict[str, torch.Tensor]:
        image = self.transform(img)  # (3, S, S), normalised
        if self.grey:
            # Everything but the erasing noise keeps R = G = B; make the noise grey as well, so the
            # network never sees colours that no grey image has.
            plain = image * self.std + self.mean
            image = (plain.mean(dim=0, keepdim=True) - self.mean) / self.std
        return {"image": image}

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.size}, grey={self.grey}, {self.transform})"


def is_grey(dataset: object, samples: int = 8) -> bool:
    """Whether the first ``samples`` images of ``dataset`` (its ``load(i) -> (PIL image, label)``)
    are grey (R = G = B everywhere): Digits and Fashion-MNIST are."""
    load = getattr(dataset, "load", None)
    if load is None:
        return False
    for i in range(min(samples, len(dataset))):  # type: ignore[arg-type]
        rgb = np.asarray(load(i)[0].convert("RGB"))
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            return False
    return True


def posterize_keep_bits(img: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's ``posterize`` as it behaved with older Pillow: keeping 0 bits gives a black image.

    RandAugment's 'PosterizeIncreasing' keeps ``4 - int(4 * m / 10)`` bits, 0 at magnitude 10
    (which 'mstd0.5' around m9 often draws); Pillow 13 refuses 0 bits ("bits must be between or
    equal to 1 and 8"), older Pillow returned a black image, which is what the recipe trained with.
    """
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform: object) -> None:
    """Point the posterize ops of every timm RandAugment / AutoAugment in ``transform`` (a
    torchvision Compose) at :func:`posterize_keep_bits`."""
    for t in getattr(transform, "transforms", ()):
        for op in getattr(t, "ops", ()) or ():
            if str(getattr(op, "name", "")).startswith("Posterize"):
                op.aug_fn = posterize_keep_bits
