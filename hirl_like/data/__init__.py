"""Data: datasets (registered in DATASETS), view transforms (TRANSFORMS), tokenizer, masks, loaders."""

from hirl_like.data import (  # noqa: F401
    caption_csv,
    caption_folder,
    digits,
    fashion_mnist,
    image_folder,
    mask_transforms,
    masking,
    transforms,
    webdataset_shards,
)
