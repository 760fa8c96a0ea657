import random

import numpy as np
import pytest
import torch

from hirl_like.data.captions import DIGIT_CLASSNAMES, DIGIT_TEMPLATES
from hirl_like.data.digits import DigitsDataset
from hirl_like.data.tokenizer import EOT_TOKEN_ID, SOT_TOKEN_ID, ClipTokenizer
from hirl_like.data.transforms import MultiCropTransform
from hirl_like.registry import DATASETS


def small_multicrop():
    return MultiCropTransform(global_crops=2, local_crops=2, global_size=16, local_size=8)


def test_split_sizes_and_stratification():
    train, val, full = DigitsDataset("train"), DigitsDataset("val"), DigitsDataset("all")
    assert len(train) + len(val) == len(full) == 1797
    assert len(val) == 360  # ceil(0.2 * 1797)
    assert set(train._indices.tolist()).isdisjoint(val._indices.tolist())
    # Stratified: per-class fractions match the full set within one sample.
    full_counts = np.bincount(full.targets, minlength=10)
    val_counts = np.bincount(val.targets, minlength=10)
    assert np.all(np.abs(val_counts - 0.2 * full_counts) <= 1)
    # Fixed split: rebuilding gives the same indices.
    assert DigitsDataset("val")._indices.tolist() == val._indices.tolist()
    assert DATASETS.get("Digits") is DigitsDataset


def test_image_size_mode_and_pixel_scale():
    from sklearn.datasets import load_digits

    ds = DigitsDataset("all", image_size=8)
    img, label = ds.load(5)
    assert img.mode == "RGB" and img.size == (8, 8)
    raw = load_digits()
    expected = np.rint(raw.images[5] * 255 / 16).astype(np.uint8)
    arr = np.asarray(img)
    assert np.array_equal(arr[..., 0], expected) and np.array_equal(arr[..., 1], arr[..., 2])
    assert label == raw.target[5]
    big = DigitsDataset("train", image_size=32)
    img, _ = big.load(0)
    assert img.size == (32, 32) and img.mode == "RGB"
    sample = big[0]
    assert sample["image"].shape == (3, 32, 32) and 0 <= sample["image"].min() and sample["image"].max() <= 1


def test_getitem_dict_and_captions():
    tok = ClipTokenizer(context_length=12)
    ds = DigitsDataset("val", image_size=16, tokenizer=tok)
    s = ds[3]
    assert set(s) == {"image", "label", "index", "text", "caption"}
    assert s["index"] == 3 and s["label"] == ds.targets[3]
    assert s["caption"] in {t.format(DIGIT_CLASSNAMES[s["label"]]) for t in DIGIT_TEMPLATES}
    assert s["text"].shape == (12,) and s["text"][0] == SOT_TOKEN_ID and EOT_TOKEN_ID in s["text"].tolist()
    assert ds[-1]["index"] == len(ds) - 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_caption_noise_and_templates_override():
    ds = DigitsDataset("all", image_size=8, caption_noise=1.0, templates=["digit {}"])
    for i in range(20):
        s = ds[i]
        assert s["caption"] != f"digit {DIGIT_CLASSNAMES[s['label']]}" and s["caption"].startswith("digit ")


def test_augmentation_deterministic_per_seed_epoch_index():
    ds = DigitsDataset("train", image_size=16, transform=small_multicrop(), seed=1)
    ds.set_epoch(2)
    first = [ds[i] for i in (0, 1, 2)]
    # Disturb the global RNGs and change the call order: results must not change.
    torch.manual_seed(123)
    random.seed(5)
    _ = ds[7]
    again = [ds[i] for i in (2, 1, 0)][::-1]
    for a, b in zip(first, again):
        for key in ("global_crops", "local_crops"):
            for x, y in zip(a[key], b[key]):
                assert torch.equal(x, y)
        assert a["caption"] == b["caption"]
    # A second dataset object with the same seed gives the same views (as a worker would).
    other = DigitsDataset("train", image_size=16, transform=small_multicrop(), seed=1)
    other.set_epoch(2)
    assert torch.equal(other[1]["global_crops"][0], first[1]["global_crops"][0])
    # Different epoch -> different views; different seed -> different views.
    ds.set_epoch(3)
    assert not torch.equal(ds[0]["global_crops"][0], first[0]["global_crops"][0])
    assert not torch.equal(ds[0]["global_crops"][1], first[0]["global_crops"][1])
    seeded = DigitsDataset("train", image_size=16, transform=small_multicrop(), seed=2)
    seeded.set_epoch(2)
    assert not torch.equal(seeded[0]["global_crops"][0], first[0]["global_crops"][0])
    # Two crops of one sample differ from each other.
    assert not torch.equal(first[0]["global_crops"][0], first[0]["global_crops"][1])


def test_global_rng_state_restored():
    ds = DigitsDataset("train", image_size=16, transform=small_multicrop())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    _ = ds[0]
    after = (torch.rand(1).item(), random.random(), np.random.rand())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    assert after == (torch.rand(1).item(), random.random(), np.random.rand())


def test_bad_arguments():
    with pytest.raises(ValueError, match="train, val, all"):
        DigitsDataset("test")
    with pytest.raises(ValueError, match="image_size"):
        DigitsDataset(image_size=0)
    with pytest.raises(ValueError, match="caption_noise"):
        DigitsDataset(caption_noise=2.0)
    with pytest.raises(ValueError, match="epoch"):
        DigitsDataset().set_epoch(-1)


def test_transform_must_return_dict():
    ds = DigitsDataset("val", image_size=8, transform=lambda img: img)
    with pytest.raises(ValueError, match="dict"):
        ds[0]


def test_build_from_config_nodes():
    from hirl_like.registry import TRANSFORMS, RegistryError

    transform = TRANSFORMS.build({"name": "MultiCropTransform", "global_crops": 1, "global_size": 16,
                                  "global_scale": [0.5, 1.0]})
    ds = DATASETS.build({"name": "Digits", "split": "val", "image_size": 16, "caption_noise": 0.1},
                        transform=transform)
    assert ds[0]["global_crops"][0].shape == (3, 16, 16) and ds.caption_noise == 0.1
    with pytest.raises(RegistryError, match="caption_noise"):  # the misspelt key gets a suggestion
        DATASETS.build({"name": "Digits", "captoin_noise": 0.1})
