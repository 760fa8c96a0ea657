"""ImageCaptionFolder on a tiny real img2dataset-style folder: counts, pairing, bad samples,
caption noise, index cache, loader and one short training run through tools/train.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hirl_like.config import load_config
from hirl_like.data.bad_samples import BAD_KEY, BadSample, BadSampleError, TooManyBadSamplesError
from hirl_like.data.caption_folder import ImageCaptionFolder, PackedStrings
from hirl_like.data.loader import build_train_loader
from hirl_like.data.sampler import ResumableDistributedSampler
from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.engine.checkpoint import load_checkpoint
from hirl_like.engine.dist_setup import init_distributed
from hirl_like.engine.trainer import Trainer
from hirl_like.registry import DATASETS
from tests.data.test_bad_samples import (
    caption_sample,
    corrupt_bytes,
    digit_bytes,
    digit_caption,
    image_sample,
    truncated_jpeg,
)

ROOT = Path(__file__).resolve().parents[2]
GOOD = 26  # digits 0..25 as good pairs
TOKENIZER = ClipTokenizer(context_length=16)


def captioned(folder: Path, **kwargs) -> ImageCaptionFolder:
    """The folder as a pipeline with a text tower reads it (a tokenizer: captions are required)."""
    return ImageCaptionFolder(str(folder), tokenizer=TOKENIZER, **kwargs)


def write_pair(folder: Path, stem: str, image: bytes, caption: str | None, ext: str = "png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.{ext}").write_bytes(image)
    if caption is not None:
        (folder / f"{stem}.txt").write_text(caption)


@pytest.fixture
def folder(tmp_path) -> Path:
    """img2dataset `files` layout: 26 good PNG pairs over two sub-folders, plus 5 broken samples,
    a caption without image, a metadata file and a hidden file (not samples)."""
    root = tmp_path / "cc"
    for k in range(GOOD):
        write_pair(root / f"{k // 13:05d}", f"{k:09d}", digit_bytes(k), digit_caption(k))
        (root / f"{k // 13:05d}" / f"{k:09d}.json").write_text("{}")
    bad = root / "00002"
    write_pair(bad, "b_corrupt", corrupt_bytes(), "random bytes", ext="jpg")
    write_pair(bad, "b_truncated", truncated_jpeg(), "half a jpeg", ext="jpg")
    write_pair(bad, "b_empty", b"", "zero bytes", ext="webp")
    write_pair(bad, "b_nocaption", digit_bytes(40), None)
    write_pair(bad, "b_blank", digit_bytes(41), "   \n", ext="jpeg")
    (bad / "orphan.txt").write_text("no image")
    write_pair(bad, ".hidden", digit_bytes(42), "hidden")
    return root


BAD_REASONS = {
    "b_blank.jpeg": "empty_caption", "b_corrupt.jpg": "corrupt", "b_empty.webp": "empty_file",
    "b_nocaption.png": "missing_caption", "b_truncated.jpg": "truncated",
}


def test_scan_counts_order_and_pairing(folder):
    ds = captioned(folder)
    assert len(ds) == GOOD + 5 and ds.missing_captions == 1
    assert DATASETS.get("ImageCaptionFolder") is ImageCaptionFolder
    names = [os.path.relpath(ds.image_path(i), folder) for i in range(len(ds))]
    assert names == sorted(names) and names[0] == "00000/000000000.png"
    reasons = {}
    for i in range(len(ds)):
        s = ds[i]
        if isinstance(s, BadSample):
            assert s.index == i and s.path == ds.image_path(i)
            reasons[os.path.basename(s.path)] = s.reason
            continue
        k = caption_sample(s["caption"])  # the caption names k and k's class...
        assert image_sample(s["image"]) == k and names[i] == f"{k // 13:05d}/{k:09d}.png"  # ...and the image is k
        assert s["label"] == -1 and s["index"] == i
    assert reasons == BAD_REASONS


def test_tokenized_captions(folder):
    ds = ImageCaptionFolder(str(folder), tokenizer=ClipTokenizer(context_length=16))
    s = ds[3]
    tokenizer = ClipTokenizer(16)
    assert s["text"].shape == (16,) and s["text"].tolist() == tokenizer(digit_caption(3))[0].tolist()
    assert tokenizer.decode(s["text"]).replace(" :", ":") == digit_caption(3)  # BPE decoding spaces the colon


def test_captions_are_tokenised_in_the_loader_workers(folder):
    tokenizer = ClipTokenizer(context_length=16)
    ds = ImageCaptionFolder(str(folder), tokenizer=tokenizer, caption_noise=0.3, seed=2)
    batches = list(build_train_loader(ds, batch_size=5, num_workers=2, seed=0, epoch=1))
    assert batches
    for batch in batches:
        assert batch["text"].shape == (len(batch["caption"]), 16) and batch["text"].dtype == torch.long
        assert batch["text"].tolist() == tokenizer(list(batch["caption"])).tolist()  # the caption after noise


def test_caption_noise_is_fixed_and_comes_from_other_samples(folder):
    clean = ImageCaptionFolder(str(folder))
    noisy = ImageCaptionFolder(str(folder), caption_noise=0.5, seed=3)
    swapped = []
    for i in range(GOOD):
        j = noisy.caption_source(i)
        assert 0 <= j < len(noisy)
        caption = noisy[i]["caption"]
        if j == i:
            assert caption == clean[i]["caption"]
        else:
            swapped.append(i)
            try:
                expected = clean.raw_caption(j)  # j's caption, even if j's image is broken
            except BadSampleError:
                expected = clean[i]["caption"]  # j has none: i keeps its own
            assert caption == expected
    assert 5 <= len(swapped) <= 21  # ~half of 26
    noisy.set_epoch(7)
    assert [noisy[i]["caption"] for i in range(GOOD)] == [ImageCaptionFolder(str(folder), caption_noise=0.5, seed=3)[i]["caption"] for i in range(GOOD)]
    other_seed = ImageCaptionFolder(str(folder), caption_noise=0.5, seed=4)
    assert [other_seed.caption_source(i) for i in range(GOOD)] != [noisy.caption_source(i) for i in range(GOOD)]
    everyone = ImageCaptionFolder(str(folder), caption_noise=1.0)
    assert all(everyone.caption_source(i) != i for i in range(len(everyone)))


def test_index_cache(folder, tmp_path):
    cache = tmp_path / "cache" / "index.txt"
    ds = ImageCaptionFolder(str(folder), index_cache=str(cache))
    header = json.loads(cache.read_text().splitlines()[0])
    assert header == {"format": "hirl_like.caption_folder.v1", "root": str(folder), "count": len(ds)}
    write_pair(folder / "00009", "new", digit_bytes(50), "new")
    cached = ImageCaptionFolder(str(folder), index_cache=str(cache))
    assert len(cached) == len(ds)  # read from the cache, not rescanned
    assert [cached.image_path(i) for i in range(len(ds))] == [ds.image_path(i) for i in range(len(ds))]
    assert cached.missing_captions == ds.missing_captions
    cache.unlink()
    assert len(ImageCaptionFolder(str(folder), index_cache=str(cache))) == len(ds) + 1
    # a cache written for another root is not used
    other = tmp_path / "other"
    write_pair(other, "x", digit_bytes(1), "x")
    assert len(ImageCaptionFolder(str(other), index_cache=str(cache))) == 1


def test_missing_and_empty_root(tmp_path):
    missing = str(tmp_path / "absent")
    with pytest.raises(FileNotFoundError) as err:
        ImageCaptionFolder(missing)
    assert missing in str(err.value) and "data.root" in str(err.value)
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "a.txt").write_text("a")
    with pytest.raises(ValueError, match="no images .*data.root"):
        ImageCaptionFolder(str(tmp_path / "only_text"))
    with pytest.raises(ValueError, match="max_bad_fraction"):
        ImageCaptionFolder(str(tmp_path), max_bad_fraction=2.0)


def test_packed_strings():
    p = PackedStrings(["a", "", "ünï/çødé", "z" * 300])
    assert len(p) == 4 and [p[i] for i in range(4)] == ["a", "", "ünï/çødé", "z" * 300]
    assert len(PackedStrings([])) == 0


def test_loader_with_workers_skips_and_counts_without_shrinking(folder):
    ds = captioned(folder)
    loader = build_train_loader(ds, batch_size=5, num_workers=2, seed=1, epoch=0)
    seen_good, seen_bad = [], []
    for batch in loader:
        seen_good += batch["index"].tolist()
        seen_bad += [b.index for b in batch.get(BAD_KEY, [])]
        for image, caption in zip(batch["image"], batch["caption"]):
            assert image_sample(image) == caption_sample(caption)  # pairs survive batching
    planned = ResumableDistributedSampler(len(ds), seed=1).epoch_indices()[: len(loader) * 5]
    assert sorted(seen_good + seen_bad) == sorted(planned)  # every planned sample is used or counted
    assert sorted(seen_bad) == sorted(i for i in planned if isinstance(ds[i], BadSample)) and seen_bad


FAST = [
    "batch_size=8", "num_workers=2", "max_iterations=3", "epochs=1", "progress_bar=false", "tensorboard=false",
    "log_interval=1", "pipeline.vision.depth=1", "pipeline.text.layers=1",
]
CLIP = ROOT / "configs/quickstart/clip_vit_tiny_digits.yaml"


def expected_bad_in_first_batches(ds: ImageCaptionFolder, n: int) -> int:
    order = ResumableDistributedSampler(len(ds), seed=0).epoch_indices()[:n]  # seed 0 = the config's
    return sum(isinstance(ds[i], BadSample) for i in order)


@pytest.mark.slow
def test_training_run_skips_and_logs_bad_samples(folder, tmp_path):
    out = tmp_path / "run"
    args = [
        sys.executable, "tools/train.py", "-c", str(CLIP), f"output_dir={out}", *FAST,
        "data.name=ImageCaptionFolder", f"data.root={folder}", "data.max_bad_fraction=0.2",
    ]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: 3 iterations" in result.stdout
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in logs if r["type"] == "data_epoch"]
    expected = expected_bad_in_first_batches(captioned(folder), 3 * 8)
    assert expected > 0
    assert len(epochs) == 1 and epochs[0]["bad_samples"] == expected and epochs[0]["epoch"] == 0
    assert sum(epochs[0]["bad_by_reason"].values()) == expected
    assert set(epochs[0]["bad_by_reason"]) <= set(BAD_REASONS.values())
    assert epochs[0]["allowed_bad_samples"] == 6  # floor(0.2 * 31)
    assert f"epoch 0: skipped {expected} bad samples" in result.stdout


def test_training_stops_past_the_limit(folder, tmp_path):
    overrides = [o.replace("num_workers=2", "num_workers=0") for o in FAST]
    assert expected_bad_in_first_batches(captioned(folder), 3 * 8) > 0
    cfg = load_config(CLIP, [f"output_dir={tmp_path}", *overrides, "data.name=ImageCaptionFolder", f"data.root={folder}", "data.max_bad_samples=0"])
    with pytest.raises(TooManyBadSamplesError, match=r"too many bad samples: \d+ read so far .* more than the 0 allowed"):
        Trainer(cfg, init_distributed(device="cpu")).fit()


def _train_in_process(folder: Path, out: Path, *overrides: str) -> dict:
    base = [o.replace("num_workers=2", "num_workers=0") for o in FAST if not o.startswith("max_iterations=")]
    cfg = load_config(CLIP, [f"output_dir={out}", *base, "data.name=ImageCaptionFolder", f"data.root={folder}", *overrides])
    return Trainer(cfg, init_distributed(device="cpu")).fit()


def test_mid_epoch_resume_keeps_the_epochs_bad_sample_count(folder, tmp_path):
    """31 samples, batch 8: one epoch = 3 iterations. Stopped after 2 and resumed, the epoch's
    data_epoch record counts the bad samples of all 3 batches, as an uninterrupted run does."""
    ds = captioned(folder)
    before, whole = expected_bad_in_first_batches(ds, 2 * 8), expected_bad_in_first_batches(ds, 3 * 8)
    assert 0 < before < whole  # bad samples on both sides of the restart (seed 0's order)
    out = tmp_path / "run"
    _train_in_process(folder, out, "max_iterations=2", "data.max_bad_fraction=0.2")
    assert load_checkpoint(out / "checkpoint.pth")["bad_samples"]["bad_by_reason"]  # saved mid-epoch
    _train_in_process(folder, out, "max_iterations=3", "data.max_bad_fraction=0.2")
    epochs = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["type"] == "data_epoch"]
    assert [(r["epoch"], r["epoch_complete"], r["bad_samples"]) for r in epochs] == [(0, False, before), (0, True, whole)]
    assert set(epochs[-1]["bad_by_reason"]) <= set(BAD_REASONS.values())
    # the next epoch starts from zero
    assert load_checkpoint(out / "checkpoint.pth")["bad_samples"] == {
        "epoch": 1, "bad_by_reason": {}, "first_bad": load_checkpoint(out / "checkpoint.pth")["bad_samples"]["first_bad"]
    }


def test_the_limit_spans_a_mid_epoch_restart(folder, tmp_path):
    ds = captioned(folder)
    before = expected_bad_in_first_batches(ds, 2 * 8)
    limit = f"data.max_bad_samples={before}"  # reached, not exceeded, before the restart
    _train_in_process(folder, tmp_path, "max_iterations=2", "data.max_bad_fraction=1.0", limit)
    with pytest.raises(TooManyBadSamplesError, match=rf"too many bad samples: {before + 1} read so far"):
        _train_in_process(folder, tmp_path, "max_iterations=3", "data.max_bad_fraction=1.0", limit)
