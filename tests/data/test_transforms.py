import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from hirl_like.data.transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    EvalTransform,
    MultiCropTransform,
    RandomGaussianBlur,
    RandomResizedCropTransform,
)
from hirl_like.registry import TRANSFORMS


def image(size=32):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))


def test_multicrop_keys_and_shapes():
    t = MultiCropTransform(global_crops=2, local_crops=3, global_size=32, local_size=16, simclr_views=2)
    out = t(image())
    assert set(out) == {"global_crops", "local_crops", "simclr_views"}
    assert [x.shape for x in out["global_crops"]] == [(3, 32, 32)] * 2
    assert [x.shape for x in out["local_crops"]] == [(3, 16, 16)] * 3
    assert [x.shape for x in out["simclr_views"]] == [(3, 32, 32)] * 2
    assert all(x.dtype == torch.float32 for v in out.values() for x in v)
    only_global = MultiCropTransform(global_crops=3, global_size=32)(image())
    assert set(only_global) == {"global_crops"} and len(only_global["global_crops"]) == 3
    assert set(MultiCropTransform(global_crops=0, simclr_views=2, global_size=32)(image())) == {"simclr_views"}
    assert "MultiCropTransform" in TRANSFORMS and "EvalTransform" in TRANSFORMS


def test_multicrop_recipe_probabilities():
    t = MultiCropTransform(global_crops=3, local_crops=1, global_size=224)
    blur1 = [s for s in t.global_transform_1.transforms if isinstance(s, RandomGaussianBlur)]
    blur2 = [s for s in t.global_transform_2.transforms if isinstance(s, RandomGaussianBlur)]
    blur_l = [s for s in t.local_transform.transforms if isinstance(s, RandomGaussianBlur)]
    assert [b.p for b in blur1 + blur2 + blur_l] == [1.0, 0.1, 0.5]
    assert blur1[0].radius_scale == 1.0  # the recipe is unchanged at 224 px
    assert any(type(s).__name__ == "RandomSolarize" and s.p == 0.2 for s in t.global_transform_2.transforms)
    assert not any(type(s).__name__ == "RandomSolarize" for s in t.global_transform_1.transforms)
    assert MultiCropTransform(global_size=32).blur_radius_scale == pytest.approx(32 / 224)


def test_blur_radius_scaled_and_probability():
    img = image(32)
    torch.manual_seed(0)
    always = RandomGaussianBlur(1.0, radius_scale=32 / 224)
    out = np.asarray(always(img)).astype(float)
    # Radius <= 2 * 32/224 < 0.3 px: the image is only lightly smoothed.
    assert 0 < np.abs(out - np.asarray(img)).mean() < 40
    # Same radius draw (fixed 2.0), with and without the 32/224 scaling: scaling blurs far less.
    def change(scale):
        blurred = RandomGaussianBlur(1.0, 2.0, 2.0, radius_scale=scale)(img)
        return np.abs(np.asarray(blurred).astype(float) - np.asarray(img)).mean()

    assert change(32 / 224) < 0.5 * change(1.0)
    never = RandomGaussianBlur(0.0)
    assert np.array_equal(np.asarray(never(img)), np.asarray(img))
    # Frequency of blurring matches p.
    half = RandomGaussianBlur(0.5, radius_min=1.0, radius_max=1.0)
    changed = sum(not np.array_equal(np.asarray(half(img)), np.asarray(img)) for _ in range(400))
    assert 150 < changed < 250


def test_normalisation_of_constant_image():
    # A constant grey image survives crops/resizes unchanged: output = (v/255 - mean) / std exactly.
    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    out = EvalTransform(size=16, resize_size=24)(grey)["image"]
    assert out.shape == (3, 16, 16)
    expected = (128 / 255 - torch.tensor(IMAGENET_DEFAULT_MEAN)) / torch.tensor(IMAGENET_DEFAULT_STD)
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-5)
    out = EvalTransform(size=16, mean=[0.5] * 3, std=[0.5] * 3)(grey)["image"]
    assert torch.allclose(out, torch.full_like(out, 128 / 255 * 2 - 1), atol=1e-5)


def test_eval_centre_crop_geometry():
    # Left half black, right half white, 40x20: resize shorter side to 10 -> 20x10, centre crop 10.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, 20:] = 255
    out = EvalTransform(size=10, mean=[0] * 3, std=[1] * 3)(Image.fromarray(arr))["image"]
    assert out.shape == (3, 10, 10)
    assert out[:, :, 0].max() < 0.1 and out[:, :, -1].min() > 0.9


def test_random_resized_crop_transform():
    out = RandomResizedCropTransform(size=24, scale=(0.2, 1.0), crops=2)(image())
    assert set(out) == {"global_crops"} and [x.shape for x in out["global_crops"]] == [(3, 24, 24)] * 2
    # scale (1, 1) on a square image and no flip: a deterministic resize.
    img = image(32)
    a = RandomResizedCropTransform(size=32, scale=(1.0, 1.0), hflip=0.0, mean=[0] * 3, std=[1] * 3)(img)
    ref = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    assert torch.allclose(a["global_crops"][0], ref, atol=1e-6)


def test_picklable():
    t = MultiCropTransform(global_crops=2, local_crops=1, global_size=32, local_size=16)
    t2 = pickle.loads(pickle.dumps(t))
    torch.manual_seed(1)
    a = t(image())
    torch.manual_seed(1)
    b = t2(image())
    views_a = a["global_crops"] + a["local_crops"]
    views_b = b["global_crops"] + b["local_crops"]
    assert all(torch.equal(x, y) for x, y in zip(views_a, views_b))


def test_flip_and_jitter_probabilities_are_settable():
    """hflip=1 mirrors what hflip=0 gives from the same seed; jitter p=1 changes it, p=0 not."""

    def crop1(**kwargs) -> torch.Tensor:
        torch.manual_seed(3)
        return MultiCropTransform(global_crops=1, global_size=32, **kwargs)(image())["global_crops"][0]

    plain = crop1(hflip=0.0, color_jitter_p=0.0)
    assert torch.allclose(crop1(hflip=1.0, color_jitter_p=0.0), plain.flip(-1), atol=1e-5)
    assert not torch.allclose(crop1(hflip=0.0, color_jitter_p=1.0), plain, atol=1e-3)
    assert "hflip=0.0, color_jitter_p=0.0" in repr(MultiCropTransform(hflip=0.0, color_jitter_p=0.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"global_crops": 0}, "at least one view"),
        ({"hflip": 1.5}, "hflip"),
        ({"color_jitter_p": -0.1}, "color_jitter_p"),
        ({"global_scale": (0.5, 0.2)}, "global_scale"),
        ({"local_scale": (0.0, 0.3)}, "local_scale"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.5, 0.0, 0.5)}, "std"),
        ({"global_size": 0}, "global_size"),
    ],
)
def test_multicrop_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiCropTransform(**kwargs)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="resize_size"):
        EvalTransform(size=32, resize_size=16)
    with pytest.raises(ValueError, match="hflip"):
        RandomResizedCropTransform(hflip=2.0)
    with pytest.raises(ValueError, match="crops"):
        RandomResizedCropTransform(crops=0)
