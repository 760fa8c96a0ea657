"""Data: datasets (registered in DATASETS), view transforms (TRANSFORMS), tokenizer, masks, loaders."""

from hirl_like.data import digits, fashion_mnist, image_folder, masking, transforms  # noqa: F401
