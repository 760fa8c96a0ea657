"""Base class of labelled image datasets that also serve captions (class name in a template).

``dataset[i]`` is a dict::

    {**transform(img),          # e.g. {"global_crops": [...], "local_crops": [...]} or {"image": Tensor(3, H, W)}
     "label": int,              # the true class (for evaluation; captions may name another one)
     "index": int,              # position in this dataset (for resumable bookkeeping, eval ordering)
     "text": LongTensor (L,),   # the tokenized caption, only when a tokenizer is set
     "caption": str}

Determinism: the transform runs with torch's CPU RNG, Python's ``random`` and NumPy's global RNG
seeded from ``(seed, epoch, index)`` and restored afterwards. A sample's views therefore depend
only on those three numbers: not on the worker that loads it, the number of workers, the order of
calls, or whether the run was resumed mid-epoch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from hirl_like.data.bad_samples import BadSample, BadSampleError, bad_sample
from hirl_like.data.captions import DEFAULT_TEMPLATES, CaptionGenerator, mix_seed
from hirl_like.data.tokenizer import ClipTokenizer

if TYPE_CHECKING:
    from hirl_like.data.masks import MaskSource

_SALT_AUGMENT = 0xA06

Transform = Callable[[Image.Image], dict]


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float Tensor (3, H, W) in [0, 1] (torchvision's ``to_tensor`` without the import cost)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class ImageCaptionDataset(torch.utils.data.Dataset):
    """Subclasses implement ``__len__``, ``load(index) -> (PIL RGB image, label)`` and set ``classnames``.

    They should also set ``self._targets`` (labels in index order) so that ``targets`` is free.
    ``default_templates`` is used when ``templates`` is None.
    """

    classnames: Sequence[str] = ()
    default_templates: Sequence[str] = DEFAULT_TEMPLATES
    masks: MaskSource | None = None  # HARL's heuristic masks (set_masks); None: no masks

    def __init__(
        self,
        transform: Transform | None = None,
        tokenizer: ClipTokenizer | None = None,
        templates: Sequence[str] | None = None,
        caption_noise: float = 0.0,
        seed: int = 0,
    ) -> None:
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable (PIL image -> dict), got {type(transform).__name__}")
        if tokenizer is not None and not callable(tokenizer):
            raise ValueError(f"tokenizer must be callable (str -> LongTensor), got {type(tokenizer).__name__}")
        if not 0.0 <= float(caption_noise) <= 1.0:
            raise ValueError(f"caption_noise must be a fraction in [0, 1], got {caption_noise!r}")
        self.transform = transform
        self.tokenizer = tokenizer
        self.templates = tuple(templates) if templates is not None else None
        self.caption_noise = float(caption_noise)
        self.seed = int(seed)
        self.epoch = 0
        self._captioner: CaptionGenerator | None = None
        self._targets: Sequence[int] | None = None
        self.masks = None

    # -- to implement -------------------------------------------------------------------------
    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int) -> tuple[Image.Image, int]:  # pragma: no cover - abstract
        """The RGB image and true label of sample ``index``; no randomness."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def captioner(self) -> CaptionGenerator:
        """Built on first use, since subclasses set ``classnames`` after calling ``__init__``."""
        if self._captioner is None:
            templates = self.templates if self.templates is not None else self.default_templates
            self._captioner = CaptionGenerator(self.classnames, templates, noise=self.caption_noise, seed=self.seed)
        return self._captioner

    @property
    def targets(self) -> list[int]:
        """True labels in index order (for k-NN, linear probe and clustering evaluation)."""
        if self._targets is not None:
            return [int(t) for t in self._targets]
        return [self.load(i)[1] for i in range(len(self))]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's caption templates and augmentation randomness."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def augmentation_seed(self, index: int) -> int:
        """The 64-bit seed of sample ``index``'s transform in the current epoch."""
        return mix_seed(self.seed, _SALT_AUGMENT, self.epoch, index)

    @staticmethod
    def validate_config(node: Mapping[str, Any], path: str) -> None:
        """Load-time check of ``masks`` / ``mask_options`` (:mod:`hirl_like.data.masks`), for the
        datasets that take them."""
        if "masks" in node or "mask_options" in node:
            from hirl_like.data.masks import resolve_mask_options

            resolve_mask_options(node.get("masks"), node.get("mask_options"), where=path or "data")

    def set_masks(
        self,
        masks: str | None,
        mask_options: Mapping[str, Any] | None,
        identity: Mapping[str, Any],
        image_root: str | None = None,
    ) -> None:
        """Give each sample a heuristic mask (``data.masks``: felzenszwalb | saliency | folder;
        :class:`~hirl_like.data.masks.MaskSource`); None: no masks. ``identity`` names the images
        (cache key), ``image_root`` is the folder sample names are relative to (None: no files)."""
        from hirl_like.data.masks import MaskSource, resolve_mask_options

        resolve_mask_options(masks, mask_options)
        if masks is None:
            self.masks = None
            return
        # every mask file is checked now, unless the transform would never read them (evaluation)
        reads = self.transform is None or getattr(self.transform, "takes_mask", False)
        names = [self.sample_name(i) for i in range(len(self))] if masks == "folder" and image_root and reads else None
        self.masks = MaskSource(masks, mask_options, {"dataset": type(self).__name__, **identity}, image_root, names)

    def mask_for(self, index: int, img: Image.Image) -> Image.Image | None:
        """Sample ``index``'s mask (PIL "L", 255 = foreground) when masks are set and the transform
        takes one (``takes_mask``, e.g. MaskedMultiCropTransform); else None (evaluation transforms)."""
        if self.masks is None or not getattr(self.transform, "takes_mask", False):
            return None
        return self.masks(self.sample_name(index), img)

    def _apply_transform(self, img: Image.Image, index: int) -> dict[str, Any]:
        if self.transform is None:
            return {"image": _to_tensor(img)}
        mask = self.mask_for(index, img)
        seed = self.augmentation_seed(index)
        py_state = random.getstate()
        np_state = np.random.get_state()
        # fork_rng restores torch's CPU generator on exit. Seed only that generator:
        # torch.manual_seed would also reseed (and not restore) the CUDA generators of a main
        # process that loads data itself (num_workers=0), and costs ~0.5 ms per call.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % (1 << 32))
            try:
                out = self.transform(img) if mask is None else self.transform(img, mask)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
        if not isinstance(out, dict):
            raise ValueError(
                f"transform {type(self.transform).__name__} returned {type(out).__name__}; "
                "transforms must return a dict such as {'image': tensor} or {'global_crops': [...]}"
            )
        return out

    def caption_for(self, index: int, label: int) -> str:
        """Sample ``index``'s caption this epoch: its class name in a template (with caption noise)."""
        return self.captioner.caption(index, label, self.epoch)

    def sample_name(self, index: int) -> str:
        """What a bad-sample report calls sample ``index`` (a file path where there is one)."""
        return f"{type(self).__name__}[{index}]"

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        index = int(index)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {n}")
        index %= n
        try:
            img, label = self.load(index)
        except BadSampleError as err:  # an unreadable file is skipped and counted, not a crash
            return bad_sample(index, self.sample_name(index), err)
        sample = self._apply_transform(img, index)
        caption = self.caption_for(index, label)
        sample["label"] = int(label)
        sample["index"] = index
        if self.tokenizer is not None:
            sample["text"] = self.tokenizer(caption)[0]
        sample["caption"] = caption
        return sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, classes={self.num_classes}, epoch={self.epoch}, seed={self.seed})"
