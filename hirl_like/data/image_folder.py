"""Class-per-subfolder image datasets (``root/<class_name>/<image>``), captions from templates.

Class names come from the folder names with underscores turned into spaces
(``root/ankle_boot/x.png`` -> "ankle boot"); classes are sorted by folder name, as torchvision's
ImageFolder sorts them, so label ids agree with it. Hidden files and folders are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from PIL import Image

from hirl_like.data.bad_samples import decode_image
from hirl_like.data.base import ImageCaptionDataset, Transform
from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.registry import DATASETS

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")


def scan_image_folder(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(sorted class folder names, [(path, label)] sorted by class then file path)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"image folder root {root!r} does not exist. Set the config key data.root to a folder "
            "with one subfolder of images per class (root/<class_name>/<image>)."
        )
    folders = sorted(
        e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=True) and not e.name.startswith(".")
    )
    samples: list[tuple[str, int]] = []
    for label, folder in enumerate(folders):
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder), followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(
                os.path.join(dirpath, f)
                for f in filenames
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
            )
        samples.extend((p, label) for p in sorted(found))
    if not samples:
        raise ValueError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under class subfolders of {root!r}; "
            "expected root/<class_name>/<image> (set data.root accordingly)"
        )
    return folders, samples


@DATASETS.register("ImageFolder")
class ImageFolderDataset(ImageCaptionDataset):
    """``root/<class>/<image>`` as an image-caption dataset.

    ``image_size`` (optional) resizes each image so that its shorter side has that many pixels
    (bicubic, aspect ratio kept) before the transform; None keeps the stored size.
    """

    def __init__(
        self,
        root: str,
        image_size: int | None = None,
        transform: Transform | None = None,
        tokenizer: ClipTokenizer | None = None,
        templates: Sequence[str] | None = None,
        caption_noise: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            transform=transform, tokenizer=tokenizer, templates=templates, caption_noise=caption_noise, seed=seed
        )
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"image_size must be a positive int or null, got {image_size!r}")
        self.root = str(root)
        self.image_size = image_size
        folders, self.samples = scan_image_folder(self.root)
        self.folder_names = folders
        self.classnames = tuple(f.replace("_", " ") for f in folders)
        self._targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, index: int) -> str:
        return self.samples[index][0]

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
