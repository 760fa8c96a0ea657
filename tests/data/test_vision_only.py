"""First hour: a flat folder of unlabelled images (``data.labels=none``), and caption layouts read
by vision-only methods without captions (no tokenizer: a missing caption is no bad sample)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset as wds

from hirl_like.config import load_config
from hirl_like.data.bad_samples import BAD_KEY, BadSample
from hirl_like.data.build import build_train_dataset
from hirl_like.data.caption_csv import CsvCaptions
from hirl_like.data.caption_folder import ImageCaptionFolder
from hirl_like.data.image_folder import ImageFolderDataset
from hirl_like.data.loader import build_train_loader
from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.data.webdataset_shards import WebDatasetShards
from hirl_like.engine.dist_setup import init_distributed
from hirl_like.engine.trainer import Trainer
from hirl_like.registry import DATASETS
from tests.data.test_bad_samples import digit_bytes, image_sample

ROOT = Path(__file__).resolve().parents[2]
DINO = ROOT / "configs/quickstart/dino_vit_tiny_digits.yaml"
TOKENIZER = ClipTokenizer(context_length=16)


@pytest.fixture
def flat(tmp_path) -> Path:
    """12 digit PNGs straight in the folder, 4 more one level down, and a hidden file."""
    root = tmp_path / "photos"
    (root / "more").mkdir(parents=True)
    for k in range(12):
        (root / f"img{k:02d}.png").write_bytes(digit_bytes(k))
    for k in range(12, 16):
        (root / "more" / f"img{k:02d}.png").write_bytes(digit_bytes(k))
    (root / ".hidden.png").write_bytes(digit_bytes(40))
    return root


# ----------------------------------------------------------------------------- labels: none
def test_a_flat_folder_reads_unlabelled(flat):
    ds = DATASETS.build({"name": "ImageFolder", "root": str(flat), "labels": "none"})
    assert isinstance(ds, ImageFolderDataset) and len(ds) == 16 and ds.classnames == ()
    for i in range(len(ds)):
        s = ds[i]
        assert s["label"] == -1 and s["caption"] == "" and s["index"] == i
        assert image_sample(s["image"]) == i  # sorted paths: img00..img11, then more/img12..15
    with pytest.raises(ValueError, match="data.labels=none: .* no class labels"):
        ds.targets


def test_a_flat_folder_without_labels_none_says_how(tmp_path):
    for k in range(3):
        (tmp_path / f"{k}.png").write_bytes(digit_bytes(k))
    with pytest.raises(ValueError, match="sit in no class folder: set data.labels=none"):
        ImageFolderDataset(str(tmp_path))


def test_labels_none_refuses_a_text_tower_and_bad_values(flat):
    with pytest.raises(ValueError, match="data.labels=none gives images without .* captions"):
        ImageFolderDataset(str(flat), labels="none", tokenizer=TOKENIZER)
    with pytest.raises(ValueError, match=r"data.labels='classes' is not one of folders, none"):
        ImageFolderDataset(str(flat), labels="classes")


def test_labels_none_from_the_command_line_trains_dino(flat, tmp_path):
    cfg = load_config(DINO, [
        f"output_dir={tmp_path / 'run'}", "data.name=ImageFolder", f"data.root={flat}", "data.labels=none",
        "data.image_size=16", "batch_size=4", "num_workers=0", "max_iterations=2", "progress_bar=false",
        "tensorboard=false", "pipeline.vision.depth=1",
    ])  # fmt: skip
    assert build_train_dataset(cfg, needs_text=False).labels == "none"
    summary = Trainer(cfg, init_distributed(device="cpu")).fit()
    assert summary["iterations"] == 2


# ------------------------------------------------------------------ caption layouts, no text
@pytest.fixture
def uncaptioned(tmp_path) -> dict[str, Path]:
    """The same 12 images as a caption folder without .txt files (one has a caption), a CSV
    without a caption column, and a shard where only some samples carry a caption."""
    folder = tmp_path / "pairs" / "00000"
    folder.mkdir(parents=True)
    for k in range(12):
        (folder / f"{k:09d}.png").write_bytes(digit_bytes(k))
    (folder / "000000003.txt").write_text("the only caption")
    csv = tmp_path / "list.csv"
    csv.write_text("filepath\n" + "".join(f"pairs/00000/{k:09d}.png\n" for k in range(12)))
    shard = tmp_path / "shards" / "00000.tar"
    shard.parent.mkdir()
    with wds.TarWriter(str(shard)) as writer:
        for k in range(12):
            sample = {"__key__": f"{k:06d}", "png": digit_bytes(k)}
            if k % 3 == 0:
                sample["txt"] = "a caption" if k else "   "
            writer.write(sample)
    (shard.parent / "sizes.json").write_text(json.dumps({"00000.tar": 12}))
    return {"folder": tmp_path / "pairs", "csv": csv, "shard": shard}


def build(kind: str, paths: dict[str, Path], tokenizer=None):
    if kind == "folder":
        return ImageCaptionFolder(str(paths["folder"]), tokenizer=tokenizer)
    if kind == "csv":
        return CsvCaptions(str(paths["csv"]), tokenizer=tokenizer)
    return WebDatasetShards(str(paths["shard"]), tokenizer=tokenizer, shuffle_buffer=0)


@pytest.mark.parametrize("kind", ["folder", "csv", "shards"])
def test_without_a_tokenizer_missing_captions_are_not_bad(kind, uncaptioned):
    ds = build(kind, uncaptioned)
    loader = build_train_loader(ds, batch_size=4, num_workers=2, seed=0, epoch=0)
    seen = []
    for batch in loader:
        assert BAD_KEY not in batch and "text" not in batch
        seen += batch["index"].tolist()
        for image, index in zip(batch["image"], batch["index"].tolist()):
            assert image_sample(image) == index
    assert sorted(seen) == list(range(12))


@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_with_a_tokenizer_missing_captions_stay_bad(kind, uncaptioned):
    ds = build(kind, uncaptioned, tokenizer=TOKENIZER)
    items = list(ds) if kind == "shards" else [ds[i] for i in range(len(ds))]
    bad = [x for x in items if isinstance(x, BadSample)]
    assert {b.reason for b in bad} <= {"missing_caption", "empty_caption"}
    assert len(bad) == (11 if kind == "folder" else 9)


def test_a_csv_without_a_caption_column_needs_one_only_for_text(uncaptioned):
    with pytest.raises(ValueError, match=r"column 'title' .*data.caption_key"):
        CsvCaptions(str(uncaptioned["csv"]), tokenizer=TOKENIZER)
    assert CsvCaptions(str(uncaptioned["csv"]))[5]["caption"] == ""


def test_dino_trains_on_a_caption_folder_without_captions(uncaptioned, tmp_path):
    cfg = load_config(DINO, [
        f"output_dir={tmp_path / 'run'}", "data.name=ImageCaptionFolder", f"data.root={uncaptioned['folder']}",
        "batch_size=4", "num_workers=2", "max_iterations=3", "progress_bar=false", "tensorboard=false",
        "pipeline.vision.depth=1", "transform.global_size=16", "pipeline.vision.img_size=16",
    ])  # fmt: skip
    summary = Trainer(cfg, init_distributed(device="cpu")).fit()
    assert summary["iterations"] == 3
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["bad_samples"] == 0 for r in records if r["type"] == "data_epoch")
