"""WebDatasetShards on tiny real tar shards written with webdataset.TarWriter: counts and sizes.json,
pairing, the epoch plan against a naive reference, the rank x worker split (no sample twice),
exact mid-epoch resume, declared sizes, broken shards, caption noise, errors, one trainer run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import webdataset as wds

import hirl_like.data.tar_shards as tar_shards_module
from hirl_like.config import load_config
from hirl_like.data.bad_samples import BAD_KEY, BadSample
from hirl_like.data.loader import StreamLoader, build_train_loader
from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.data.webdataset_shards import (
    WebDatasetShards,
    count_tar_samples,
    expand_urls,
    plan_segments,
    role_batches,
)
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

SIZES = [7, 5, 9, 6, 8, 5]  # 40 samples; sample k is digit k, key f"{k:06d}"
N = sum(SIZES)
BAD = {3: "corrupt", 9: "missing_image", 15: "truncated", 23: "missing_caption", 30: "empty_file"}
ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ClipTokenizer(context_length=16)


def shards(*args, **kwargs) -> WebDatasetShards:
    """The shards as a pipeline with a text tower reads them (a tokenizer: captions are required)."""
    return WebDatasetShards(*args, tokenizer=TOKENIZER, **kwargs)


def sample_members(k: int) -> dict:
    members = {"__key__": f"{k:06d}", "png": digit_bytes(k), "txt": digit_caption(k), "json": json.dumps({"k": k})}
    reason = BAD.get(k)
    if reason == "corrupt":
        members["png"] = corrupt_bytes()
    elif reason == "missing_image":
        del members["png"]
    elif reason == "truncated":
        del members["png"]
        members["jpg"] = truncated_jpeg()
    elif reason == "missing_caption":
        del members["txt"]
    elif reason == "empty_file":
        members["png"] = b""
    return members


@pytest.fixture
def shard_dir(tmp_path) -> Path:
    folder = tmp_path / "shards"
    folder.mkdir()
    k = 0
    for s, size in enumerate(SIZES):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as writer:
            for _ in range(size):
                writer.write(sample_members(k))
                k += 1
    return folder


def pattern(folder: Path) -> str:
    return str(folder / "{00000..00005}.tar")


def ids(item) -> int:
    return item.index if isinstance(item, BadSample) else item["index"]


def check_item(item) -> None:
    """Good samples pair image k with caption k and carry index k; bad ones have the expected reason."""
    if isinstance(item, BadSample):
        assert BAD[item.index] == item.reason, item
    else:
        k = item["index"]
        assert k not in BAD and caption_sample(item["caption"]) == k and image_sample(item["image"]) == k
        assert item["label"] == -1


def epoch_items(ds, world: int, workers: int, batch: int, epoch: int = 0, start: int = 0) -> list[list[list]]:
    """Per rank, per batch: the good samples' (index, caption) and the bad samples' index."""
    out = []
    for rank in range(world):
        loader = build_train_loader(ds, batch, workers, seed=0, epoch=epoch, rank=rank, world_size=world, start_iteration=start)
        batches = []
        for b in loader:
            for image, caption in zip(b["image"], b["caption"]):
                assert image_sample(image) == caption_sample(caption)
            batches.append(sorted(b["index"].tolist() + [x.index for x in b.get(BAD_KEY, [])]))
            assert len(batches[-1]) == batch
        assert len(batches) == len(loader)
        out.append(batches)
    return out


# ---------------------------------------------------------------------------------------------
def test_counts_sizes_file_and_registration(shard_dir, monkeypatch):
    assert [count_tar_samples(str(shard_dir / f"{s:05d}.tar")) for s in range(6)] == SIZES
    ds = shards(pattern(shard_dir))
    assert len(ds) == N and ds.counts == SIZES and ds.exact_counts
    assert json.loads((shard_dir / "sizes.json").read_text()) == {f"{s:05d}.tar": c for s, c in enumerate(SIZES)}
    assert DATASETS.get("WebDatasetShards") is WebDatasetShards
    monkeypatch.setattr(tar_shards_module, "count_tar_samples", lambda path: pytest.fail("counted again"))
    assert shards(pattern(shard_dir)).counts == SIZES  # read from sizes.json
    with pytest.raises(ValueError, match="num_samples=41 but .*sizes.json lists 40"):
        shards(pattern(shard_dir), num_samples=41)


def test_plain_iteration_yields_every_sample_once_paired(shard_dir):
    ds = shards(pattern(shard_dir), shuffle_buffer=4)
    items = list(ds)
    assert sorted(ids(x) for x in items) == list(range(N))
    for item in items:
        check_item(item)
    assert {x.index: x.reason for x in items if isinstance(x, BadSample)} == BAD
    assert [ids(x) for x in items] == [ids(x) for x in ds]  # deterministic
    with pytest.raises(TypeError, match="streamed"):
        ds[0]


def naive_plan(counts, order, world, roles, batch):
    """Reference: list every (shard, position) in the epoch's shard order, then hand out
    consecutive slices: rank-major, then worker role, each role len(range(role, steps, roles)) batches."""
    sequence = [(s, p) for s in order for p in range(counts[s])]
    steps = len(sequence) // (world * batch)
    plan, cursor = {}, 0
    for rank in range(world):
        for role in range(roles):
            n = 0
            for j in range(steps):
                if j % roles == role:
                    n += batch
            plan[rank, role] = sequence[cursor : cursor + n]
            cursor += n
    return steps, plan


@pytest.mark.parametrize("counts", [[7, 5, 9, 6, 8, 5], [3], [1, 1, 1, 10], [4, 4, 4, 4]])
@pytest.mark.parametrize("world,roles,batch", [(1, 1, 1), (2, 2, 4), (3, 2, 2), (2, 3, 1)])
def test_plan_segments_matches_the_naive_split(counts, world, roles, batch):
    order = list(reversed(range(len(counts))))
    steps, expected = naive_plan(counts, order, world, roles, batch)
    if steps == 0:
        return
    used = []
    for (rank, role), want in expected.items():
        got = [(seg.shard, p) for seg in plan_segments(counts, order, rank, role, steps, roles, batch) for p in range(seg.start, seg.end)]
        assert got == want
        assert len(got) == role_batches(role, steps, roles) * batch
        used += got
    assert len(used) == len(set(used)) == world * steps * batch  # disjoint; only the tail is left


def test_two_ranks_two_workers_split_every_sample_once(shard_dir):
    ds = shards(pattern(shard_dir), shuffle_buffer=3)
    per_rank = epoch_items(ds, world=2, workers=2, batch=4)
    assert [len(r) for r in per_rank] == [5, 5]  # 40 // (2 x 4) steps on every rank
    seen = [i for rank in per_rank for b in rank for i in b]
    assert sorted(seen) == list(range(N))  # union = all samples, no duplicates
    # each worker reads its own contiguous part of the shuffled shard sequence
    order = ds.shard_order()
    sequence = [sum(SIZES[:s]) + p for s in order for p in range(SIZES[s])]
    for rank in range(2):
        for role in range(2):
            part = sequence[rank * 20 + role * 12 : rank * 20 + role * 12 + role_batches(role, 5, 2) * 4]
            batches = per_rank[rank][role::2]  # the DataLoader takes batches from workers round robin
            assert sorted(i for b in batches for i in b) == sorted(part)


def test_more_slots_than_shards_still_reads_each_sample_once(shard_dir):
    ds = shards(pattern(shard_dir), shuffle_buffer=0)
    with pytest.warns(UserWarning, match="6 shards for 4 rank.*sample-level"):
        per_rank = epoch_items(ds, world=4, workers=2, batch=2)  # 8 slots > 6 shards
    seen = [i for rank in per_rank for b in rank for i in b]
    assert [len(r) for r in per_rank] == [5] * 4 and len(seen) == len(set(seen)) == 40


def test_order_depends_on_seed_and_epoch_only(shard_dir):
    ds = shards(pattern(shard_dir), shuffle_buffer=8)
    a = epoch_items(ds, world=1, workers=2, batch=5, epoch=3)
    assert epoch_items(ds, world=1, workers=2, batch=5, epoch=3) == a
    assert epoch_items(ds, world=1, workers=2, batch=5, epoch=4) != a
    other = shards(pattern(shard_dir), shuffle_buffer=8, seed=1)
    assert epoch_items(other, world=1, workers=2, batch=5, epoch=3) != a


def test_resume_mid_epoch_is_exact(shard_dir):
    ds = shards(pattern(shard_dir), shuffle_buffer=6, caption_noise=0.3, seed=2)
    def run(start):
        loader = build_train_loader(ds, 3, 2, seed=0, epoch=1, rank=1, world_size=2, start_iteration=start)
        assert isinstance(loader, StreamLoader) and len(loader) == 6 - start
        return [(b["index"].tolist(), b["caption"], b["image"], [x.index for x in b.get(BAD_KEY, [])]) for b in loader]
    full, resumed = run(0), run(3)
    assert len(full) == 6 and len(resumed) == 3
    for a, b in zip(full[3:], resumed):
        assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2]) and a[3] == b[3]


def test_declared_num_samples_assumes_equal_shards_and_pads_short_ones(shard_dir):
    ds = shards(pattern(shard_dir), num_samples=48, sizes_file=str(shard_dir / "none.json"), shuffle_buffer=0)
    assert not ds.exact_counts and ds.counts == [8] * 6 and len(ds) == 48
    with pytest.warns(UserWarning) as caught:
        items = list(ds)
    surplus = [str(w.message) for w in caught if "surplus" in str(w.message)]
    assert len(surplus) == 1 and "00002.tar holds more than the 8 samples assumed from data.num_samples=48" in surplus[0]
    assert len(items) == 48
    padding = [x for x in items if isinstance(x, BadSample) and x.reason == "shard_error"]
    assert len(padding) == sum(max(0, 8 - c) for c in SIZES) == 9
    assert len({ids(x) for x in items}) == 48  # indices follow the assumed sizes: 8 * shard + position
    good = [x for x in items if not isinstance(x, BadSample)]
    for item in good:
        assert image_sample(item["image"]) == caption_sample(item["caption"])
    others = sorted([caption_sample(x["caption"]) for x in good])
    unread = sum(SIZES[:2]) + 8  # the 9th sample of shard 2 lies beyond the assumed 8
    assert others == [k for k in range(N) if k not in BAD and k != unread]
    assert sorted(x.reason for x in items if isinstance(x, BadSample) and x.reason != "shard_error") == sorted(BAD.values())
    assert not (shard_dir / "none.json").exists()  # declared: nothing counted or written


def test_a_stale_sizes_file_is_read_to_its_sizes_with_a_warning(shard_dir, recwarn):
    items = list(shards(pattern(shard_dir), shuffle_buffer=0))  # writes sizes.json
    assert len(items) == N and not [w for w in recwarn if "surplus" in str(w.message)]  # exact sizes: silent
    sizes = json.loads((shard_dir / "sizes.json").read_text())
    sizes["00004.tar"] -= 3  # the shard grew after the file was written
    (shard_dir / "sizes.json").write_text(json.dumps(sizes))
    ds = shards(pattern(shard_dir), shuffle_buffer=0)
    assert ds.exact_counts and len(ds) == N - 3
    with pytest.warns(UserWarning, match=r"00004.tar holds more than the 5 samples listed in .*sizes.json.*stale"):
        items = list(ds)
    assert len(items) == N - 3 and len({ids(x) for x in items}) == N - 3


def test_a_truncated_shard_is_read_up_to_the_break(shard_dir):
    path = shard_dir / "00002.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3 + 100])  # cut inside a member (an interrupted copy)
    with pytest.warns(UserWarning, match="unreadable"):
        n = count_tar_samples(str(path))
    assert 0 < n < SIZES[2]
    with pytest.warns(UserWarning, match="unreadable"):
        ds = shards(pattern(shard_dir), shuffle_buffer=0)
    items = list(ds)
    assert len(items) == len(ds) == N - SIZES[2] + n
    assert len({(ids(x)) for x in items}) == len(items)
    good = [x for x in items if not isinstance(x, BadSample)]
    for item in good:  # (indices after shard 2 shift: they follow the counted sizes)
        assert image_sample(item["image"]) == caption_sample(item["caption"]) not in BAD
    reasons = sorted(x.reason for x in items if isinstance(x, BadSample))
    assert reasons.count("shard_error") >= 1 and len(good) + len(reasons) == len(items)


def test_caption_noise_draws_recent_captions_of_the_same_worker(shard_dir):
    clean = list(shards(pattern(shard_dir), shuffle_buffer=0, seed=5))
    noisy_ds = shards(pattern(shard_dir), shuffle_buffer=0, caption_noise=0.4, seed=5)
    noisy = list(noisy_ds)
    assert [ids(x) for x in noisy] == [ids(x) for x in clean]
    swapped = 0
    for pos, item in enumerate(noisy):
        if isinstance(item, BadSample):
            continue
        k = caption_sample(item["caption"])
        assert image_sample(item["image"]) == item["index"]
        if k != item["index"]:
            swapped += 1
            earlier = [caption_sample(x["caption"]) for x in clean[:pos] if not isinstance(x, BadSample)]
            assert k in earlier  # from the reservoir of captions this worker already read
    assert 5 <= swapped <= 25
    assert [x["caption"] if isinstance(x, dict) else None for x in noisy_ds] == [
        x["caption"] if isinstance(x, dict) else None for x in noisy
    ]


def test_errors_name_the_path_and_key(shard_dir, tmp_path):
    missing = str(tmp_path / "nowhere" / "00000.tar")
    with pytest.raises(FileNotFoundError) as err:
        shards(str(tmp_path / "nowhere" / "{00000..00003}.tar"))
    assert missing in str(err.value) and "data.urls" in str(err.value) and "4 of 4 shards" in str(err.value)
    with pytest.raises(ValueError, match="declare data.num_samples"):
        shards("https://example.com/{0..3}.tar")
    remote = shards("https://example.com/{0..3}.tar", num_samples=100)
    assert remote.counts == [25] * 4 and not remote.exact_counts
    with pytest.raises(ValueError, match="twice"):
        expand_urls(["a.tar", "{a,b}.tar"])
    assert expand_urls("x/{0..1}.tar::y.tar") == ["x/0.tar", "x/1.tar", "y.tar"]
    with pytest.raises(ValueError, match="global batch"):
        build_train_loader(shards(pattern(shard_dir)), 32, 0, seed=0, epoch=0, world_size=2)


def test_trainer_runs_an_epoch_of_shards_and_logs_bad_samples(shard_dir, tmp_path):
    cfg = load_config(ROOT / "configs/quickstart/clip_vit_tiny_digits.yaml", [
        f"output_dir={tmp_path / 'run'}", "batch_size=8", "num_workers=0", "epochs=1", "progress_bar=false",
        "tensorboard=false", "pipeline.vision.depth=1", "pipeline.text.layers=1",
        "data.name=WebDatasetShards", f"data.urls={pattern(shard_dir)}", "data.max_bad_fraction=0.2",
    ])
    summary = Trainer(cfg, init_distributed(device="cpu")).fit()
    assert summary["iterations"] == N // 8
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    (record,) = [r for r in logs if r["type"] == "data_epoch"]
    assert record["bad_samples"] == len(BAD) and record["bad_by_reason"] == {r: 1 for r in BAD.values()}
    assert os.path.exists(tmp_path / "run" / "checkpoint.pth")



def test_benchmark_takes_its_batch_from_a_streaming_dataset(shard_dir):
    sys.path.insert(0, str(ROOT / "tools"))
    from benchmark import measure

    result = measure(
        str(ROOT / "configs/quickstart/clip_vit_tiny_digits.yaml"),
        ["num_workers=0", "pipeline.vision.depth=1", "pipeline.text.layers=1",
         "data.name=WebDatasetShards", f"data.urls={pattern(shard_dir)}", "data.max_bad_fraction=0.2"],
        batch_size=4, steps=1, warmup=1, data_batches=1,
    )
    assert result["step_time_median_s"] > 0 and result["loader_images_per_s"] > 0
