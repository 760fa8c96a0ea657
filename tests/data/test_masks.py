"""HARL's masks: the heuristics against hand-made images and a naive per-segment loop, the cache
(computed once, settings in its key), precomputed mask folders and their refusals, the config keys,
and image and mask cropped and flipped together by MaskedMultiCropTransform."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_erosion

from hirl_like.config import load_config
from hirl_like.config.errors import ConfigError
from hirl_like.data.digits import DigitsDataset
from hirl_like.data.image_folder import ImageFolderDataset
from hirl_like.data.loader import build_train_loader
from hirl_like.data.mask_heuristics import centre_box, centre_segments, felzenszwalb_foreground, saliency_foreground
from hirl_like.data.mask_transforms import MaskedMultiCropTransform
from hirl_like.data.masks import MaskSource
from hirl_like.data.transforms import EvalTransform, MultiCropTransform

SQUARE = (slice(30, 60), slice(50, 85))  # rows, cols of the object in the synthetic image


def square_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(120, 10, (96, 128, 3)).clip(0, 255).astype(np.uint8)
    img[SQUARE] = [220, 40, 40]
    return img


def write_folder(root, n: int = 3, size=(40, 30)) -> list[str]:
    paths = []
    for c in ("cat", "dog"):
        os.makedirs(root / c, exist_ok=True)
        for i in range(n):
            arr = np.zeros((size[1], size[0], 3), np.uint8)
            arr[8:20, 10:25] = 200
            path = root / c / f"{i}.jpg"
            Image.fromarray(arr).save(path, quality=95)
            paths.append(str(path))
    return paths


# -- heuristics -----------------------------------------------------------------------------------
def test_centre_segments_matches_a_naive_loop_over_segments():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 5, (12, 10))
        r0, r1, c0, c1 = centre_box(12, 10, 0.5)
        box = np.zeros((12, 10), bool)
        box[r0:r1, c0:c1] = True
        expected = np.zeros((12, 10), bool)
        for s in np.unique(labels):  # |segment ∩ box| / |segment| > |box| / |image|
            seg = labels == s
            if (seg & box).sum() / seg.sum() > box.sum() / box.size:
                expected |= seg
        if not expected.any():
            expected = labels == labels[6, 5]
        assert np.array_equal(centre_segments(labels, 0.5), expected)
    ring = np.zeros((9, 9), int)
    ring[3:6, 3:6] = 1  # an object in the centre, a background around it reaching into the box
    assert np.array_equal(centre_segments(ring), ring == 1)
    assert centre_segments(np.zeros((5, 5), int)).all()  # one segment: the centre pixel's


def test_felzenszwalb_and_saliency_find_the_square():
    img = square_image()
    inside = np.zeros(img.shape[:2], bool)
    inside[SQUARE] = True
    fg = felzenszwalb_foreground(img)
    assert fg[inside].mean() > 0.95 and fg[~inside].mean() < 0.05
    sal = saliency_foreground(img)
    assert sal[inside].mean() > 0.9 and sal[~inside].mean() < 0.2
    assert not saliency_foreground(np.full((32, 32, 3), 90, np.uint8)).any()  # a uniform image: nothing salient


# -- cache ----------------------------------------------------------------------------------------
def test_computed_masks_are_cached_once_with_the_settings_in_the_key(tmp_path, monkeypatch):
    write_folder(tmp_path / "imgs")
    make = lambda **o: ImageFolderDataset(str(tmp_path / "imgs"), masks="felzenszwalb",  # noqa: E731
                                          mask_options={"cache_dir": str(tmp_path / "cache"), **o})
    ds = make()
    img, _ = ds.load(0)
    first = ds.masks(ds.sample_name(0), img)
    path = ds.masks.mask_path(ds.sample_name(0))
    assert os.path.isfile(path) and path.startswith(str(tmp_path / "cache"))
    settings = json.loads(open(os.path.join(ds.masks.folder, "settings.json")).read())
    assert settings["method"] == "felzenszwalb" and settings["settings"]["scale"] == 100.0
    assert settings["dataset"]["dataset"] == "ImageFolderDataset"
    monkeypatch.setattr(MaskSource, "compute", lambda self, image: pytest.fail("recomputed a cached mask"))
    assert np.array_equal(np.asarray(make().masks(ds.sample_name(0), img)), np.asarray(first))
    other = make(scale=300.0)
    assert other.masks.folder != ds.masks.folder  # a changed setting never reads a stale cache
    assert ImageFolderDataset(str(tmp_path / "imgs"), image_size=20, masks="felzenszwalb",
                              mask_options={"cache_dir": str(tmp_path / "cache")}).masks.folder != ds.masks.folder


def test_a_cached_mask_of_another_size_is_refused_naming_it(tmp_path):
    ds = DigitsDataset(image_size=16, masks="saliency", mask_options={"cache_dir": str(tmp_path)})
    path = ds.masks.mask_path(ds.sample_name(3))
    os.makedirs(os.path.dirname(path))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(path)
    with pytest.raises(ValueError, match=path):
        ds.masks(ds.sample_name(3), ds.load(3)[0])


def test_default_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HIRL_LIKE_CACHE", str(tmp_path / "c"))
    ds = DigitsDataset(image_size=16, masks="felzenszwalb")
    assert ds.masks.folder.startswith(str(tmp_path / "c" / "masks"))


# -- precomputed folders ----------------------------------------------------------------------------
def test_folder_masks_beside_the_image_folder(tmp_path):
    paths = write_folder(tmp_path / "train")
    for p in paths:
        mask_path = p.replace(str(tmp_path / "train"), str(tmp_path / "train_masks")).replace(".jpg", ".png")
        os.makedirs(os.path.dirname(mask_path), exist_ok=True)
        m = np.zeros((30, 40), np.uint8)
        m[8:20, 10:25] = 1  # any nonzero value is foreground
        Image.fromarray(m).save(mask_path)
    ds = ImageFolderDataset(str(tmp_path / "train"), masks="folder")
    mask = np.asarray(ds.masks(ds.sample_name(0), ds.load(0)[0]))
    assert mask.shape == (30, 40) and set(np.unique(mask)) == {0, 255} and mask[10, 12] == 255
    resized = ImageFolderDataset(str(tmp_path / "train"), image_size=15, masks="folder")
    img, _ = resized.load(0)
    assert resized.masks(resized.sample_name(0), img).size == img.size  # follows the dataset's resize
    bad = tmp_path / "train_masks" / "dog" / "1.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(bad)
    index = [i for i in range(len(ds)) if ds.sample_name(i).endswith(os.path.join("dog", "1.jpg"))][0]
    with pytest.raises(ValueError, match=str(bad)):
        ds.masks(ds.sample_name(index), ds.load(index)[0])
    os.remove(bad)
    with pytest.raises(FileNotFoundError, match=str(bad)):
        ImageFolderDataset(str(tmp_path / "train"), masks="folder")
    # an evaluation transform never reads masks, so none are required (a val split without masks)
    ImageFolderDataset(str(tmp_path / "train"), transform=EvalTransform(size=8), masks="folder")


def test_folder_masks_refusals(tmp_path):
    root = tmp_path / "pngs" / "a"
    os.makedirs(root)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "x.png")
    with pytest.raises(ValueError, match="also one of the dataset's images"):
        ImageFolderDataset(str(tmp_path / "pngs"), masks="folder", mask_options={"dir": str(tmp_path / "pngs")})
    with pytest.raises(ValueError, match="no image files"):
        DigitsDataset(masks="folder")


# -- config keys ------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,match", [
    ("data.masks=felzenswalb", "felzenszwalb, saliency, folder"),
    ("data.mask_options.scael=200", "did you mean 'scale'"),
    ("data.mask_options.center_fraction=0", r"in \(0, 1\]"),
    ("data.mask_options.dir=x", "not a setting of masks=felzenszwalb"),
])
def test_config_keys_are_checked_at_load_time(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("configs/quickstart/harl_resnet18_digits.yaml", [override])


def test_masks_off_or_evaluation_transforms_compute_nothing(tmp_path, monkeypatch):
    assert DigitsDataset(image_size=16).masks is None
    with pytest.raises(ValueError, match="masks is null"):
        DigitsDataset(mask_options={"scale": 3.0})
    monkeypatch.setattr(MaskSource, "compute", lambda self, image: pytest.fail("a mask for an evaluation transform"))
    ds = DigitsDataset(image_size=16, transform=EvalTransform(size=16), masks="felzenszwalb",
                       mask_options={"cache_dir": str(tmp_path)})
    assert set(ds[0]) >= {"image", "label"} and "global_masks" not in ds[0]


# -- image and mask transformed together ----------------------------------------------------------
def _hand_drawn() -> tuple[Image.Image, Image.Image]:
    """An L-shaped object off the centre (so that a missed flip shows) in image and mask alike;
    the object's grey level 100 survives solarize (threshold 128) and grayscale."""
    img = np.zeros((96, 96, 3), np.uint8)
    mask = np.zeros((96, 96), np.uint8)
    for sl in ((slice(10, 50), slice(55, 70)), (slice(40, 50), slice(70, 90))):
        img[sl] = 100
        mask[sl] = 255
    return Image.fromarray(img), Image.fromarray(mask)


def test_masked_multicrop_keeps_each_mask_on_its_image_over_many_random_views():
    img, mask = _hand_drawn()
    transform = MaskedMultiCropTransform(global_crops=2, local_crops=2, global_size=48, local_size=24,
                                         global_scale=(0.2, 1.0), local_scale=(0.1, 0.5), mean=(0, 0, 0),
                                         std=(1, 1, 1), hflip=0.5, color_jitter_p=0.0, vflip=0.5)
    flips_seen, checked = set(), 0
    for seed in range(60):
        torch.manual_seed(seed)
        out = transform(img, mask)
        assert len(out["global_masks"]) == 2 and len(out["local_masks"]) == 2
        for crops, masks in ((out["global_crops"], out["global_masks"]), (out["local_crops"], out["local_masks"])):
            for crop, m in zip(crops, masks):
                assert m.shape == (1, *crop.shape[1:]) and set(m.unique().tolist()) <= {0.0, 1.0}
                fg = m[0].numpy() > 0
                bright = crop.mean(0).numpy() > 0.2
                core, far = binary_erosion(fg, iterations=2), binary_erosion(~fg, iterations=2)
                assert bright[core].all() and not bright[far].any(), f"seed {seed}: mask off its image"
                checked += int(core.any())
                ys, xs = np.nonzero(fg)
                if len(xs):  # where the vertical bar sits tells which flips were applied
                    flips_seen.add((xs.mean() < fg.shape[1] / 2, ys.mean() > fg.shape[0] / 2))
    assert checked > 100 and len(flips_seen) >= 3


def test_without_a_mask_the_views_are_multicrop_s_exactly():
    img, _ = _hand_drawn()
    args = dict(global_crops=2, local_crops=1, global_size=32, local_size=16)
    for seed in range(3):
        torch.manual_seed(seed)
        plain = MultiCropTransform(**args)(img)
        torch.manual_seed(seed)
        masked = MaskedMultiCropTransform(**args)(img)
        assert set(plain) == set(masked)
        for key in plain:
            assert all(torch.equal(a, b) for a, b in zip(plain[key], masked[key]))
    with pytest.raises(ValueError, match="mask size"):
        MaskedMultiCropTransform(**args)(img, Image.new("L", (5, 5)))


def test_digits_with_masks_batch_the_masks(tmp_path):
    transform = MaskedMultiCropTransform(global_size=16, global_scale=(0.6, 1.0), hflip=0.0, color_jitter_p=0.0)
    ds = DigitsDataset(image_size=16, transform=transform, masks="felzenszwalb", mask_options={"cache_dir": str(tmp_path)})
    sample = ds[5]
    torch.manual_seed(0)
    assert [tuple(m.shape) for m in sample["global_masks"]] == [(1, 16, 16)] * 2
    assert torch.equal(ds[5]["global_masks"][0], sample["global_masks"][0])  # seeded per (seed, epoch, index)
    loader = build_train_loader(ds, batch_size=4, num_workers=0, seed=0, epoch=0)
    batch = next(iter(loader))
    assert [tuple(m.shape) for m in batch["global_masks"]] == [(4, 1, 16, 16)] * 2


def test_fashion_mnist_with_masks_batches_aligned_masks(tmp_path):
    """Fashion-MNIST takes the heuristic masks too (HARL's comparison data); a mask covers part of
    the item, not the whole canvas, and is cached under the split's settings."""
    from hirl_like.data.fashion_mnist import DEFAULT_ROOT, FashionMNISTDataset

    if not os.path.isdir(DEFAULT_ROOT):
        pytest.skip("needs apt-get install -y dataset-fashion-mnist")
    transform = MaskedMultiCropTransform(global_size=28, global_scale=(1.0, 1.0), hflip=0.0, color_jitter_p=0.0)
    ds = FashionMNISTDataset(limit=20, transform=transform, masks="felzenszwalb", mask_options={"cache_dir": str(tmp_path)})
    masks = [ds[i]["global_masks"][0] for i in range(len(ds))]
    shares = torch.stack([m.float().mean() for m in masks])
    assert ((shares > 0.02) & (shares < 0.98)).float().mean() > 0.5  # foreground and background in most images
    with pytest.raises(ValueError, match="no image files"):
        FashionMNISTDataset(limit=20, masks="folder")
