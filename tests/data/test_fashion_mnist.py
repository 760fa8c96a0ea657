import gzip
import os

import numpy as np
import pytest

from hirl_like.data.captions import FASHION_MNIST_CLASSNAMES
from hirl_like.data.fashion_mnist import (
    DEFAULT_ROOT,
    FashionMNISTDataset,
    read_idx,
    stratified_prefix,
)
from hirl_like.registry import DATASETS

REAL = os.path.isfile(os.path.join(DEFAULT_ROOT, "t10k-images-idx3-ubyte.gz"))


def idx_bytes(array: np.ndarray) -> bytes:
    """Naive IDX writer (ubyte): magic 0x0000 08 ndim, then big-endian int32 dims, then data."""
    header = bytes([0, 0, 0x08, array.ndim])
    for d in array.shape:
        header += int(d).to_bytes(4, "big")
    return header + array.astype(np.uint8).tobytes()


def write_split(root, prefix, images, labels, compress):
    for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
        path = os.path.join(root, f"{prefix}-{kind}-ubyte" + (".gz" if compress else ""))
        data = idx_bytes(arr)
        if compress:
            with gzip.open(path, "wb") as f:
                f.write(data)
        else:
            with open(path, "wb") as f:
                f.write(data)


@pytest.fixture
def tiny_root(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    labels = np.arange(30) % 10
    write_split(str(tmp_path), "train", images, labels, compress=True)
    write_split(str(tmp_path), "t10k", images[:10], labels[:10], compress=False)  # raw files work too
    return str(tmp_path), images, labels


def test_tiny_idx_roundtrip(tiny_root):
    root, images, labels = tiny_root
    ds = FashionMNISTDataset(root=root, split="train")
    assert len(ds) == 30 and ds.targets == labels.tolist()
    img, label = ds.load(4)
    assert img.mode == "RGB" and img.size == (28, 28) and label == 4
    assert np.array_equal(np.asarray(img)[..., 1], images[4])
    test = FashionMNISTDataset(root=root, split="val")  # alias of test
    assert len(test) == 10
    assert FashionMNISTDataset(root=root, split="test").targets == test.targets
    s = FashionMNISTDataset(root=root, split="train", image_size=14)[7]
    assert s["image"].shape == (3, 14, 14)
    assert FASHION_MNIST_CLASSNAMES[7] in s["caption"]
    assert DATASETS.get("FashionMNIST") is FashionMNISTDataset


def test_holdout_is_carved_from_the_end_of_the_training_file(tiny_root):
    root, images, labels = tiny_root
    train = FashionMNISTDataset(root=root, split="train", holdout=10)
    held = FashionMNISTDataset(root=root, split="holdout", holdout=10)
    assert train.targets == labels[:20].tolist() and held.targets == labels[20:].tolist()
    assert np.array_equal(np.asarray(held.load(0)[0])[..., 0], images[20])
    assert len(FashionMNISTDataset(root=root, split="test", holdout=10)) == 10  # the test file is untouched
    assert len(FashionMNISTDataset(root=root, split="train", holdout=10, limit=10)) == 10  # limit within the rest
    for kwargs, match in (({"split": "holdout"}, "data.holdout > 0"), ({"holdout": 30}, "leaves no training image"),
                          ({"holdout": -1}, "holdout must be")):
        with pytest.raises(ValueError, match=match):
            FashionMNISTDataset(root=root, **kwargs)


def test_limit_is_stratified_and_nested(tiny_root):
    root, _, _ = tiny_root
    ds = FashionMNISTDataset(root=root, split="train", limit=20)
    assert sorted(ds.targets) == sorted(list(range(10)) * 2)
    labels = np.array([0, 0, 0, 1, 2, 2, 1, 0])
    # Naive reference: round-robin over classes in file order.
    assert stratified_prefix(labels, 3).tolist() == [0, 3, 4]
    assert stratified_prefix(labels, 5).tolist() == [0, 1, 3, 4, 5]
    assert set(stratified_prefix(labels, 3)) <= set(stratified_prefix(labels, 6))


def test_corrupt_files_raise_clear_errors(tmp_path):
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    labels = np.zeros(5, dtype=np.uint8)
    write_split(str(tmp_path), "train", images, labels, compress=False)
    img_path = tmp_path / "train-images-idx3-ubyte"
    # Truncated data.
    img_path.write_bytes(idx_bytes(images)[:-10])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
        FashionMNISTDataset(root=str(tmp_path))
    # Wrong magic (a label file where an image file belongs).
    img_path.write_bytes(idx_bytes(labels))
    with pytest.raises(ValueError, match="magic"):
        FashionMNISTDataset(root=str(tmp_path))
    # Not a gzip file although named .gz.
    img_path.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        FashionMNISTDataset(root=str(tmp_path))
    # Right magic, header cut short.
    img_path = tmp_path / "train-images-idx3-ubyte"
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    img_path.write_bytes(idx_bytes(images)[:9])
    with pytest.raises(ValueError, match="header"):
        FashionMNISTDataset(root=str(tmp_path))
    # Short header.
    p = tmp_path / "short"
    p.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="short"):
        read_idx(str(p), 0x803)


def test_missing_paths(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as err:
        FashionMNISTDataset(root=missing)
    msg = str(err.value)
    assert missing in msg and "data.root" in msg and "apt-get install -y dataset-fashion-mnist" in msg
    with pytest.raises(FileNotFoundError) as err:
        FashionMNISTDataset(root=str(tmp_path))  # exists but empty
    assert "train-images-idx3-ubyte" in str(err.value) and "data.root" in str(err.value)
    with pytest.raises(ValueError, match="train, holdout, test, val"):
        FashionMNISTDataset(root=str(tmp_path), split="validation")


@pytest.mark.skipif(not REAL, reason="dataset-fashion-mnist not installed")
def test_real_files():
    test = FashionMNISTDataset(split="test")
    assert len(test) == 10_000
    assert np.bincount(test.targets).tolist() == [1000] * 10
    img, label = test.load(0)
    assert img.size == (28, 28) and img.mode == "RGB" and label == 9  # first test image: ankle boot
    sub = FashionMNISTDataset(split="train", limit=100)
    assert len(sub) == 100 and np.bincount(sub.targets).tolist() == [10] * 10
