"""eval_image_size: the size the evaluation commands build their images at, for any backbone."""

from __future__ import annotations

from pathlib import Path

import pytest

import hirl_like.models  # noqa: F401  (registers the backbones)
from hirl_like.config import load_config
from hirl_like.data.build import build_eval_dataset, eval_image_size

ROOT = Path(__file__).resolve().parents[2]
DINO = ROOT / "configs" / "quickstart" / "dino_vit_tiny_digits.yaml"


def _cfg(vision=None, transform=None) -> dict:
    return {"pipeline": {"vision": vision} if vision is not None else {}, **({"transform": transform} if transform else {})}


@pytest.mark.parametrize("vision,transform,size", [
    ({"name": "vit", "img_size": 48}, {"name": "MultiCropTransform", "global_size": 32}, 48),  # the ViT's own size first
    ({"name": "vit"}, {"name": "RandomResizedCropTransform", "size": 48}, 224),  # a ViT's default img_size
    ({"name": "resnet18", "small_image_stem": True}, {"name": "MultiCropTransform", "global_size": 32}, 32),
    ({"name": "resnet50"}, {"name": "RandomResizedCropTransform", "size": 96}, 96),
    ({"name": "resnet50"}, {"name": "EvalTransform", "size": 40}, 40),
    ({"name": "resnet50"}, {"name": "RandomResizedCropTransform"}, 224),  # the transform's default size
    ({"name": "resnet50"}, {"name": "MultiCropTransform", "local_size": 16}, 224),  # never the local crops
    ({"name": "resnet50"}, None, 224),
    (None, None, 224),
    ({"name": "not_a_model"}, {"name": "not_a_transform", "size": 64}, 64),  # unknown names: the keys as written
])
def test_eval_image_size(vision, transform, size):
    assert eval_image_size(_cfg(vision, transform)) == size


def test_eval_image_size_of_a_loaded_config_and_the_dataset_built_at_it():
    vit = load_config(DINO)
    resnet = load_config(DINO, ["pipeline.vision={name: resnet18, small_image_stem: true}", "transform.global_size=16"])
    assert eval_image_size(vit) == 32  # pipeline.vision.img_size
    assert eval_image_size(resnet) == 16  # no img_size: transform.global_size
    sample = build_eval_dataset(resnet, "val")[0]
    assert tuple(sample["image"].shape) == (3, 16, 16)
