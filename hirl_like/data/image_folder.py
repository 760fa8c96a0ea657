"""Class-per-subfolder image datasets (``root/<class_name>/<image>``), captions from templates.

Class names come from the folder names with underscores turned into spaces
(``root/ankle_boot/x.png`` -> "ankle boot"); classes are sorted by folder name, as torchvision's
ImageFolder sorts them, so label ids agree with it. Hidden files and folders are ignored.

Splits: with ``split`` set (config key ``data.split``) the classes are read from
``root/<split>/<class_name>/<image>``, e.g. ``root: datasets/imagenet, split: train``. The
evaluation scripts set ``split`` (``--train_split`` / ``--test_split``) on the training config's
``data`` node, so a config written this way evaluates on ``datasets/imagenet/val`` unchanged.
Without ``split`` (null) ``root`` itself holds the class folders.

Unlabelled images: ``labels: none`` (``data.labels=none``) reads every image under the folder, at
any depth and in sorted path order, with no class folders needed: a flat folder of photos works
as it is. Every sample's ``label`` is -1, the "no class" value the image-caption datasets use
too, rather than 0: a single made-up class would let k-NN or a linear probe report a perfect,
meaningless accuracy, whereas -1 makes evaluation that needs labels refuse the data (``targets``
raises). Such a folder has no class names, hence no captions: it is for vision-only methods
(DINO, iBOT, MAE); with a text tower, use an image-caption layout.

Unreadable images (corrupt, truncated, empty) become bad samples, skipped and counted by the
loaders and the trainer (:mod:`hirl_like.data.bad_samples`); ``max_bad_fraction`` /
``max_bad_samples`` (``data.max_bad_fraction`` / ``data.max_bad_samples``) set how many an epoch
may hold before training stops.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from hirl_like.data.bad_samples import check_limit_args
from hirl_like.data.base import ImageCaptionDataset, Transform
from hirl_like.data.decode import decode_image
from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.registry import DATASETS

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
LABEL_MODES = ("folders", "none")
NO_LABEL = -1


def _images_under(folder: str) -> list[str]:
    """Every image file under ``folder`` (any depth, symlinks followed, hidden entries skipped), sorted."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        )
    return sorted(found)


def _check_root(root: str, key: str, layout: str) -> None:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder root {root!r} does not exist. Set the config key {key} to a folder {layout}.")


def scan_unlabelled_folder(root: str, key: str = "data.root") -> list[str]:
    """Every image under ``root`` (sorted paths), for ``labels: none``."""
    _check_root(root, key, "of images (any layout; data.labels=none)")
    images = _images_under(root)
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root!r} (set {key} accordingly)")
    return images


def scan_image_folder(root: str, key: str = "data.root") -> tuple[list[str], list[tuple[str, int]]]:
    """(sorted class folder names, [(path, label)] sorted by class then file path).

    ``key`` names the config key(s) that chose ``root``, for the error messages.
    """
    _check_root(root, key, "with one subfolder of images per class (root/<class_name>/<image>)")
    folders = sorted(
        e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=True) and not e.name.startswith(".")
    )
    samples: list[tuple[str, int]] = []
    for label, folder in enumerate(folders):
        samples.extend((p, label) for p in _images_under(os.path.join(root, folder)))
    if not samples:
        loose = any(
            e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in os.scandir(root) if not e.name.startswith(".")
        )
        hint = " The images there sit in no class folder: set data.labels=none to read them unlabelled." if loose else ""
        raise ValueError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under class subfolders of {root!r}; "
            f"expected root/<class_name>/<image> (set {key} accordingly).{hint}"
        )
    return folders, samples


@DATASETS.register("ImageFolder")
class ImageFolderDataset(ImageCaptionDataset):
    """``root/<class>/<image>`` (or ``root/<split>/<class>/<image>``) as an image-caption dataset.

    Args:
        root: the folder (config key ``data.root``).
        split: a sub-folder of ``root`` holding the class folders (``data.split``, e.g. "train" or
            "val"); None reads the class folders from ``root`` itself.
        image_size: resizes each image so that its shorter side has that many pixels (bicubic,
            aspect ratio kept) before the transform; None keeps the stored size.
        labels: "folders" (class subfolders, the default) or "none" (every image under the folder,
            label -1, no captions: see the module docstring; ``data.labels``).
        max_bad_fraction, max_bad_samples: the per-epoch limit on unreadable images
            (:class:`~hirl_like.data.bad_samples.BadSampleTracker`).
        transform, tokenizer, templates, caption_noise, seed: see
            :class:`~hirl_like.data.base.ImageCaptionDataset`.
        masks, mask_options: HARL's heuristic masks (felzenszwalb | saliency | folder), see
            :mod:`hirl_like.data.masks`; ``folder`` reads ``<folder>_masks/<class>/<stem>.png``.
    """

    def __init__(
        self,
        root: str,
        split: str | None = None,
        image_size: int | None = None,
        transform: Transform | None = None,
        tokenizer: ClipTokenizer | None = None,
        templates: Sequence[str] | None = None,
        caption_noise: float = 0.0,
        seed: int = 0,
        max_bad_fraction: float = 0.01,
        max_bad_samples: int | None = None,
        labels: str = "folders",
        masks: str | None = None,
        mask_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            transform=transform, tokenizer=tokenizer, templates=templates, caption_noise=caption_noise, seed=seed
        )
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"image_size must be a positive int or null, got {image_size!r}")
        if not isinstance(root, (str, os.PathLike)) or not str(root):
            raise ValueError(f"root must be a folder path (config key data.root), got {root!r}")
        if split is not None and (not isinstance(split, str) or not split):
            raise ValueError(f"split must be a sub-folder name of data.root or null (config key data.split), got {split!r}")
        check_limit_args(max_bad_fraction, max_bad_samples)
        if labels not in LABEL_MODES:
            raise ValueError(
                f"data.labels={labels!r} is not one of {', '.join(LABEL_MODES)}: 'folders' reads class subfolders "
                "(root/<class_name>/<image>), 'none' reads every image under the folder without labels"
            )
        if labels == "none" and tokenizer is not None:
            raise ValueError(
                "data.labels=none gives images without class names, hence without captions, but this pipeline has "
                "a text tower that needs them; use an image-caption layout (data.name=ImageCaptionFolder, CsvCaptions "
                "or WebDatasetShards) or a vision-only method"
            )
        self.labels = labels
        self.max_bad_fraction = float(max_bad_fraction)
        self.max_bad_samples = max_bad_samples
        self.root = str(root)
        self.split = split
        self.image_size = image_size
        if split is None:
            self.folder, key = self.root, "data.root"
        else:
            self.folder, key = os.path.join(self.root, split), "data.root (with data.split)"
            if not os.path.isdir(self.folder):
                raise FileNotFoundError(
                    f"image folder {self.folder!r} does not exist: data.root={self.root!r} with data.split={split!r} "
                    "reads data.root/<split>/<class_name>/<image>. Point data.root at the folder holding the "
                    "split folders (e.g. datasets/imagenet with train/ and val/), or set data.split=null to read "
                    "the class folders from data.root itself."
                )
        if labels == "none":
            self.samples = [(p, NO_LABEL) for p in scan_unlabelled_folder(self.folder, key)]
            self.classnames = ()
        else:
            folders, self.samples = scan_image_folder(self.folder, key)
            self.classnames = tuple(f.replace("_", " ") for f in folders)
        self._targets = [label for _, label in self.samples]
        identity = {"folder": os.path.abspath(self.folder), "image_size": image_size}
        self.set_masks(masks, mask_options, identity, image_root=self.folder)  # hirl_like.data.masks

    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, index: int) -> str:
        return self.samples[index][0]

    @property
    def targets(self) -> list[int]:
        if self.labels == "none":
            raise ValueError(
                f"data.labels=none: the images under {self.folder!r} have no class labels; evaluate k-NN / linear "
                "probe / clustering on a labelled dataset (ImageFolder with class folders, FashionMNIST, Digits)"
            )
        return super().targets

    def caption_for(self, index: int, label: int) -> str:
        return "" if self.labels == "none" else super().caption_for(index, label)

    def load(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        img = decode_image(path)  # BadSampleError for a corrupt, truncated or empty file
        if self.image_size is not None:
            w, h = img.size
            scale = self.image_size / min(w, h)
            new = (max(1, round(w * scale)), max(1, round(h * scale)))
            if new != img.size:
                img = img.resize(new, Image.Resampling.BICUBIC)
        return img, label
