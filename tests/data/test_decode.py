"""Images decoded right: EXIF orientation, 16-bit / 32-bit / float scaled by their range, alpha and
palette transparency on white, CMYK and 1-bit, every kind written with PIL in the test; and every
image-reading dataset decodes through the same function."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from hirl_like.data.bad_samples import BadSampleError
from hirl_like.data.caption_csv import CsvCaptions
from hirl_like.data.caption_folder import ImageCaptionFolder
from hirl_like.data.decode import decode_image
from hirl_like.data.image_folder import ImageFolderDataset
from hirl_like.data.rgb import ALPHA_BACKGROUND, scale_to_uint8, to_rgb
from hirl_like.data.webdataset_shards import WebDatasetShards

ORIENTATION = 0x0112


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def decoded(img: Image.Image, fmt: str = "PNG", **kw) -> np.ndarray:
    out = decode_image(encode(img, fmt, **kw))
    assert out.mode == "RGB"
    arr = np.asarray(out)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    return arr


def pattern() -> np.ndarray:
    """An asymmetric smooth uint8 (48, 80) pattern (survives JPEG; every rotation differs)."""
    y, x = np.mgrid[0:48, 0:80]
    return (x * 2.5 + (y > 24) * 50).astype(np.uint8)


def exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(Image.fromarray(pattern()), "JPEG", quality=95, exif=exif.tobytes())


# ------------------------------------------------------------------------------------ EXIF
@pytest.mark.parametrize("orientation, k", [(3, 2), (6, -1), (8, 1)])  # np.rot90 turns counter-clockwise
def test_exif_orientation_is_applied(orientation, k):
    with Image.open(io.BytesIO(exif_jpeg(orientation))) as raw:
        assert raw.getexif()[ORIENTATION] == orientation and raw.size == (80, 48)  # stored unrotated
    grey = np.asarray(decode_image(exif_jpeg(orientation)))[..., 0].astype(float)
    expected = np.rot90(pattern(), k).astype(float)
    assert grey.shape == expected.shape
    assert np.abs(grey - expected).mean() < 3  # JPEG error only
    if orientation == 3:
        assert np.abs(grey - pattern()).mean() > 30  # and not the stored orientation


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
def test_a_malformed_exif_block_keeps_the_pixels():
    img = Image.fromarray(pattern())
    data = encode(img, "JPEG", quality=95, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\xff")
    arr = np.asarray(decode_image(data))[..., 0].astype(float)
    assert arr.shape == (48, 80) and np.abs(arr - pattern()).mean() < 3


# ------------------------------------------------------------------------------- high depth
def test_a_16_bit_gradient_is_not_saturated():
    gradient = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (16, 1))
    img = Image.fromarray(gradient)
    assert img.mode == "I;16"
    assert (np.asarray(Image.open(io.BytesIO(encode(img, "PNG"))).convert("RGB")) == 255).mean() > 0.5  # PIL alone
    arr = decoded(img)
    row = arr[0, :, 0].astype(int)
    assert (arr == 255).mean() < 0.01
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0)  # ordering kept
    assert len(np.unique(row)) > 200  # and resolved


def test_a_dark_16_bit_image_is_stretched_by_its_own_range():
    values = np.tile(np.linspace(1000, 5000, 100).astype(np.uint16), (4, 1))
    arr = decoded(Image.fromarray(values))[..., 0].astype(int)
    assert arr.min() == 0 and arr.max() == 255
    assert np.all(np.diff(arr[0]) >= 0)
    assert np.allclose(arr[0], (values[0].astype(float) - 1000) * 255 / 4000, atol=1)


@pytest.mark.parametrize(
    "dtype, mode",
    [(">u2", "I;16B"), ("<i4", "I"), ("<f4", "F")],
)
def test_big_endian_32_bit_and_float_tiffs_are_scaled_by_range(dtype, mode):
    base = np.linspace(-3.0, 7.0, 64) if mode == "F" else np.linspace(0, 60000, 64)
    if mode == "I":
        base = np.linspace(-70000, 90000, 64)
    values = np.tile(base.astype(dtype), (8, 1))
    img = Image.fromarray(values)
    assert img.mode == mode
    arr = decoded(img, "TIFF")[..., 0].astype(int)
    assert arr[0, 0] == 0 and arr[0, -1] == 255 and np.all(np.diff(arr[0]) >= 0)
    expected = (base - base.min()) * 255 / (base.max() - base.min())
    assert np.allclose(arr[0], expected, atol=1)


def test_constant_and_non_finite_high_depth_images():
    white16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert np.all(decoded(white16) == 255)  # 16-bit constant: its place in the 16-bit range
    mid16 = Image.fromarray(np.full((4, 4), 25700, np.uint16))
    assert np.all(decoded(mid16) == 100)
    assert np.all(decoded(Image.fromarray(np.full((4, 4), 3.7, np.float32)), "TIFF") == 4)  # F: clip(round(x))
    assert np.all(decoded(Image.fromarray(np.full((4, 4), 1000, np.int32)), "TIFF") == 255)
    floats = np.array([[0.0, np.nan, 1.0, np.inf, -np.inf, 0.5]], np.float32)
    assert decoded(Image.fromarray(floats), "TIFF")[0, :, 0].tolist() == [0, 0, 255, 255, 0, 128]
    assert scale_to_uint8(np.array([np.nan, np.inf])).tolist() == [0, 255]


# ---------------------------------------------------------------------------- alpha, palette
def test_palette_with_transparency_is_composited_on_white():
    indices = np.array([[0, 1, 2, 0]], np.uint8)
    img = Image.fromarray(indices, mode="P")
    img.putpalette([255, 0, 0, 0, 0, 255, 10, 200, 30] + [0] * (256 * 3 - 9))
    plain = decoded(img)
    assert plain[0].tolist() == [[255, 0, 0], [0, 0, 255], [10, 200, 30], [255, 0, 0]]
    transparent = decoded(img, transparency=0)  # palette index 0 (red) is transparent
    assert transparent[0].tolist() == [list(ALPHA_BACKGROUND), [0, 0, 255], [10, 200, 30], list(ALPHA_BACKGROUND)]


def test_palette_with_partial_alpha_table_is_composited():
    img = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
    img.putpalette([0, 0, 0, 200, 100, 0] + [0] * (256 * 3 - 6))
    arr = decoded(img, transparency=bytes([128, 255]))  # tRNS: index 0 half transparent
    assert np.allclose(arr[0, 0], [127, 127, 127], atol=1)  # black at 50% on white
    assert arr[0, 1].tolist() == [200, 100, 0]


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_composited_on_white(mode):
    alpha = np.array([[0, 128, 255]], np.uint8)
    grey = np.full((1, 3), 50, np.uint8)
    if mode == "LA":
        img = Image.fromarray(np.stack([grey, alpha], -1), mode="LA")
    else:
        img = Image.fromarray(np.stack([grey, grey, grey, alpha], -1), mode="RGBA")
    arr = decoded(img)[0]
    assert arr[0].tolist() == [255, 255, 255]  # fully transparent: the background
    assert np.allclose(arr[1], (50 * 128 + 255 * 127) / 255, atol=1)
    assert arr[2].tolist() == [50, 50, 50]  # opaque: unchanged


def test_premultiplied_and_grey_transparency_modes():
    la = Image.new("La", (2, 1), 0)
    assert np.asarray(to_rgb(la)).tolist() == [[[255, 255, 255]] * 2]
    grey = Image.fromarray(np.array([[10, 20]], np.uint8))
    arr = decoded(grey, transparency=10)  # PNG tRNS on a grey image
    assert arr[0].tolist() == [[255, 255, 255], [20, 20, 20]]


# -------------------------------------------------------------------------------- CMYK, 1-bit
def test_cmyk_is_converted():
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [128, 0, 0, 128]]], np.uint8)
    arr = decoded(Image.fromarray(cmyk, mode="CMYK"), "TIFF")[0]
    assert arr[0].tolist() == [255, 255, 255]
    assert arr[1].tolist() == [0, 255, 255]  # cyan
    assert arr[2].tolist() == [0, 0, 0]
    assert np.allclose(arr[3], [63, 127, 127], atol=1)  # 255 (1 - C)(1 - K)
    jpeg = decoded(Image.fromarray(np.full((8, 8, 4), [0, 255, 0, 0], np.uint8), mode="CMYK"), "JPEG", quality=100)
    assert np.allclose(jpeg.reshape(-1, 3).mean(0), [255, 0, 255], atol=4)  # magenta through a CMYK JPEG


def test_one_bit_images():
    bits = Image.fromarray(np.array([[0, 255, 255, 0]], np.uint8)).convert("1")
    assert decoded(bits)[0].tolist() == [[0, 0, 0], [255, 255, 255], [255, 255, 255], [0, 0, 0]]


def test_undecodable_modes_are_bad_samples():
    with pytest.raises(BadSampleError) as err:
        decode_image(b"not an image at all")
    assert err.value.reason == "corrupt"


# ------------------------------------------------------------- one decoder for every layout
def test_every_image_reading_dataset_applies_exif_orientation(tmp_path: Path):
    data = exif_jpeg(6)
    expected = np.rot90(pattern(), -1).astype(float)

    folder = tmp_path / "classes" / "cat"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(data)
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "a.jpg").write_bytes(data)
    (pairs / "a.txt").write_text("a caption")
    (tmp_path / "list.csv").write_text("filepath,title\npairs/a.jpg,a caption\n")
    shard = tmp_path / "shard.tar"
    with wds.TarWriter(str(shard)) as writer:
        writer.write({"__key__": "a", "jpg": data, "txt": "a caption"})
    (tmp_path / "sizes.json").write_text(json.dumps({"shard.tar": 1}))

    images = [
        ImageFolderDataset(str(tmp_path / "classes"))[0]["image"],
        ImageCaptionFolder(str(pairs))[0]["image"],
        CsvCaptions(str(tmp_path / "list.csv"))[0]["image"],
        next(iter(WebDatasetShards(str(shard))))["image"],
    ]
    for image in images:
        grey = image[0].numpy() * 255
        assert grey.shape == expected.shape and np.abs(grey - expected).mean() < 3
