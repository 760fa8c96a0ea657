import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hirl_like.config import load_config
from hirl_like.data.bad_samples import BadSampleTracker
from hirl_like.data.build import build_eval_dataset
from hirl_like.data.image_folder import ImageFolderDataset
from hirl_like.data.transforms import EvalTransform
from hirl_like.registry import DATASETS


@pytest.fixture
def folder(tmp_path):
    # Classes "ankle_boot" (2 images, one in a nested folder) and "cat" (1 grey image); noise files ignored.
    (tmp_path / "cat").mkdir()
    (tmp_path / "ankle_boot" / "more").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "ankle_boot" / "b.png")
    Image.new("RGB", (12, 12), (0, 255, 0)).save(tmp_path / "ankle_boot" / "more" / "a.png")
    Image.new("L", (8, 8), 128).save(tmp_path / "cat" / "x.PNG")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 8)).save(tmp_path / ".hidden" / "y.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "top_level.png")
    return tmp_path


def test_layout_classnames_labels(folder):
    ds = ImageFolderDataset(root=str(folder))
    assert ds.classnames == ("ankle boot", "cat")
    assert len(ds) == 3 and ds.targets == [0, 0, 1]
    paths = [p for p, _ in ds.samples]
    assert paths[0].endswith("ankle_boot/b.png") and paths[1].endswith("ankle_boot/more/a.png")
    img, label = ds.load(2)
    assert img.mode == "RGB" and label == 1 and np.asarray(img)[0, 0].tolist() == [128, 128, 128]
    s = ds[0]
    assert "ankle boot" in s["caption"] and s["label"] == 0 and s["image"].shape == (3, 10, 20)
    assert DATASETS.get("ImageFolder") is ImageFolderDataset


def test_image_size_resizes_shorter_side(folder):
    ds = ImageFolderDataset(root=str(folder), image_size=6, transform=EvalTransform(size=6))
    img, _ = ds.load(0)
    assert img.size == (12, 6)
    assert ds[0]["image"].shape == (3, 6, 6)


def test_templates_and_noise(folder):
    ds = ImageFolderDataset(root=str(folder), templates=["a {}"], caption_noise=1.0)
    assert [ds[i]["caption"] for i in range(3)] == ["a cat", "a cat", "a ankle boot"]


def test_missing_and_empty_root(tmp_path):
    missing = str(tmp_path / "absent")
    with pytest.raises(FileNotFoundError) as err:
        ImageFolderDataset(root=missing)
    assert missing in str(err.value) and "data.root" in str(err.value)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(root=str(tmp_path))


def test_corrupt_truncated_and_empty_images_are_bad_samples_not_crashes(folder):
    from hirl_like.data.bad_samples import BadSample
    from hirl_like.data.loader import build_eval_loader

    noisy = folder / "noisy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(noisy)
    (folder / "cat" / "corrupt.png").write_bytes(b"this is not a png")
    (folder / "cat" / "empty.jpg").write_bytes(b"")
    (folder / "cat" / "truncated.png").write_bytes(noisy.read_bytes()[: noisy.stat().st_size // 2])
    ds = ImageFolderDataset(root=str(folder), transform=EvalTransform(size=8))
    assert len(ds) == 6
    results = [ds[i] for i in range(len(ds))]
    bad = {r.path.rsplit("/", 1)[-1]: r.reason for r in results if isinstance(r, BadSample)}
    assert bad == {"corrupt.png": "corrupt", "empty.jpg": "empty_file", "truncated.png": "truncated"}
    # The loader drops them from the batch and lists them under "_bad".
    batch = next(iter(build_eval_loader(ds, batch_size=6, num_workers=0)))
    assert batch["image"].shape[0] == 3 and len(batch["_bad"]) == 3


# ---------------------------------------------------------------------------------------------
# splits (what the evaluation scripts set) and the configurable bad-sample limit
# ---------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def split_root(tmp_path) -> Path:
    """ImageNet-style ``root/{train,val}/<class>/<image>``: 3 + 2 train images, 1 + 1 val images."""
    colours = {"train": {"cat": 3, "dog": 2}, "val": {"cat": 1, "dog": 1}}
    for split, classes in colours.items():
        for name, n in classes.items():
            (tmp_path / "imagenet" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "imagenet" / split / name / f"{i}.png")
    return tmp_path / "imagenet"


def test_split_reads_a_sub_folder_of_root(split_root):
    train = DATASETS.build({"name": "ImageFolder", "root": str(split_root), "split": "train"})
    val = DATASETS.build({"name": "ImageFolder", "root": str(split_root), "split": "val"})
    assert (len(train), len(val)) == (5, 2)
    assert train.targets == [0, 0, 0, 1, 1] and val.targets == [0, 1]
    assert train.classnames == val.classnames == ("cat", "dog")
    assert all(p.startswith(str(split_root / "val") + os.sep) for p, _ in val.samples)
    # split=None (the default) keeps reading the class folders from root itself
    assert len(ImageFolderDataset(root=str(split_root / "train"))) == 5


def test_missing_split_names_the_path_and_both_keys(split_root):
    with pytest.raises(FileNotFoundError) as err:
        ImageFolderDataset(root=str(split_root), split="test")
    msg = str(err.value)
    assert str(split_root / "test") in msg and "data.root" in msg and "data.split='test'" in msg
    # a root that already is a split folder: the message says how to fix it
    with pytest.raises(FileNotFoundError, match="data.split=null"):
        ImageFolderDataset(root=str(split_root / "train"), split="val")
    for bad in ("", 3):
        with pytest.raises(ValueError, match="data.split"):
            ImageFolderDataset(root=str(split_root), split=bad)


def test_evaluation_builds_each_split_from_a_training_config(split_root, tmp_path):
    """The evaluation scripts set data.split on the training config's data node; ImageFolder takes it."""
    cfg = load_config(ROOT / "configs/quickstart/dino_vit_tiny_digits.yaml", [
        f"output_dir={tmp_path / 'run'}", "data.name=ImageFolder", f"data.root={split_root}", "data.split=train",
        "data.max_bad_fraction=0.5",
    ])
    train, val = build_eval_dataset(cfg, "train"), build_eval_dataset(cfg, "val")
    assert isinstance(train, ImageFolderDataset) and (len(train), len(val)) == (5, 2)
    assert val[1]["label"] == 1 and val[1]["image"].shape[0] == 3


def test_bad_sample_limit_is_configurable(split_root):
    ds = ImageFolderDataset(root=str(split_root), split="train", max_bad_fraction=0.5, max_bad_samples=1)
    tracker = BadSampleTracker.for_dataset(ds)
    assert (tracker.max_bad_fraction, tracker.max_bad_samples, tracker.allowed) == (0.5, 1, 1)
    assert BadSampleTracker.for_dataset(ImageFolderDataset(root=str(split_root), split="train")).allowed == 0  # 1% of 5
    with pytest.raises(ValueError, match="max_bad_fraction"):
        ImageFolderDataset(root=str(split_root), split="train", max_bad_fraction=1.5)
    with pytest.raises(ValueError, match="max_bad_samples"):
        ImageFolderDataset(root=str(split_root), split="train", max_bad_samples=-1)
