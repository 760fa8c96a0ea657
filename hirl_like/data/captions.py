"""Captions for labelled images: class names in prompt templates, with optional fixed label noise.

Web captions are noisy: some name the wrong thing, and they stay wrong every epoch. With
``noise = p`` a fraction ~p of the samples (chosen once from ``(seed, index)``) gets a caption
naming a different class, drawn uniformly among the other classes; this is what makes Harmony's
soft CLIP targets testable on labelled data. Templates vary per epoch, as different web captions
of a similar picture would.

Everything is a pure function of the arguments, via :func:`mix_seed` (a splitmix64 hash), so
captions are identical across processes, workers and resumed runs, and no global RNG is touched.
"""

from __future__ import annotations

from collections.abc import Sequence

DIGIT_CLASSNAMES: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)

FASHION_MNIST_CLASSNAMES: tuple[str, ...] = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)

# CLIP-style prompts (in the spirit of CLIP's ImageNet prompt ensemble; written for this toolbox).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a low resolution photo of a {}.",
    "a black and white photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "itap of a {}.",
)

DIGIT_TEMPLATES: tuple[str, ...] = (
    "a photo of the number {}.",
    "a handwritten digit {}.",
    "a photo of the digit {}.",
    "a scan of a handwritten {}.",
    "the number {} written by hand.",
    "a low resolution image of the digit {}.",
    "a blurry photo of the number {}.",
    "a black and white picture of the digit {}.",
    "a pixelated handwritten {}.",
    "the digit {}.",
)

_MASK64 = (1 << 64) - 1

# Salts keep the streams of different decisions independent for the same (seed, index).
_SALT_NOISY = 0x4E01
_SALT_WRONG_CLASS = 0x4E02
_SALT_TEMPLATE = 0x7E03


def _splitmix64(x: int) -> int:
    """One splitmix64 step: a bijective 64-bit mixer with good avalanche (Steele et al. 2014)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*keys: int) -> int:
    """A 64-bit seed that is a pure function of the integer ``keys`` (order matters).

    Chaining the mixer, rather than adding keys, keeps (seed=1, epoch=0) and (seed=0, epoch=1) apart.
    """
    h = 0x6A09E667F3BCC908  # arbitrary non-zero start
    for k in keys:
        h = _splitmix64(h ^ (int(k) & _MASK64))
    return h


def _uniform(*keys: int) -> float:
    """A U[0, 1) draw determined by ``keys`` (53 random mantissa bits)."""
    return (mix_seed(*keys) >> 11) / float(1 << 53)


def _check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError(f"templates must be a non-empty list of strings with one '{{}}', got {templates!r}")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"every template needs exactly one '{{}}' for the class name; got {t!r}")
    return tuple(templates)


class CaptionGenerator:
    """``caption(index, label, epoch) -> str`` from class names and templates, with fixed label noise.

    - noisy sample: ``u(seed, index) < noise``; its caption class is ``(label + 1 + floor(v * (C-1))) % C``
      with ``v = u'(seed, index)``, i.e. uniform over the C-1 wrong classes and the same every epoch;
    - template: ``templates[floor(u''(seed, index, epoch) * len(templates))]``.
    """

    def __init__(self, classnames: Sequence[str], templates: Sequence[str], noise: float = 0.0, seed: int = 0) -> None:
        if isinstance(classnames, str) or len(classnames) == 0:
            raise ValueError(f"classnames must be a non-empty list of strings, got {classnames!r}")
        if not 0.0 <= float(noise) <= 1.0:
            raise ValueError(f"caption noise must be a fraction in [0, 1], got {noise!r}")
        if noise > 0 and len(classnames) < 2:
            raise ValueError("caption noise needs at least 2 classes (a noisy caption names a different class)")
        self.classnames = tuple(str(c) for c in classnames)
        self.templates = _check_templates(templates)
        self.noise = float(noise)
        self.seed = int(seed)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def is_noisy(self, index: int) -> bool:
        """Whether sample ``index`` has a wrong caption (fixed across epochs)."""
        return self.noise > 0 and _uniform(self.seed, _SALT_NOISY, index) < self.noise

    def noisy_label(self, index: int, label: int) -> int:
        """The class the caption of sample ``index`` names: ``label`` unless the sample is noisy."""
        label = int(label)
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} out of range for {self.num_classes} classes")
        if not self.is_noisy(index):
            return label
        offset = 1 + int(_uniform(self.seed, _SALT_WRONG_CLASS, index) * (self.num_classes - 1))
        return (label + offset) % self.num_classes

    def template(self, index: int, epoch: int = 0) -> str:
        """The template used for sample ``index`` in ``epoch``."""
        k = int(_uniform(self.seed, _SALT_TEMPLATE, index, epoch) * len(self.templates))
        return self.templates[k]

    def caption(self, index: int, label: int, epoch: int = 0) -> str:
        """The caption of sample ``index`` (true class ``label``) in ``epoch``."""
        return self.template(index, epoch).format(self.classnames[self.noisy_label(index, label)])

    def __repr__(self) -> str:
        return (
            f"CaptionGenerator({self.num_classes} classes, {len(self.templates)} templates, "
            f"noise={self.noise}, seed={self.seed})"
        )
