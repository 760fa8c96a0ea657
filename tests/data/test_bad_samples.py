"""Robust loading: decode/caption errors by reason, the skipping collate, the tracker and its limit.

Also holds the tiny real fixtures (sklearn digits written with PIL, broken files) that the other
image-caption dataset tests import.
"""

from __future__ import annotations

import io
import random
import re
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch.utils.data import Dataset, default_collate

from hirl_like.data.bad_samples import (
    BAD_KEY,
    REASONS,
    BadSample,
    BadSampleError,
    BadSampleTracker,
    TooManyBadSamplesError,
    clean_caption,
    collate_skip_bad,
    read_caption_file,
)
from hirl_like.data.decode import decode_image
from hirl_like.data.captions import DIGIT_CLASSNAMES
from hirl_like.data.loader import build_train_loader
from hirl_like.distributed import all_reduce_sum

# ---------------------------------------------------------------------------------------------
# shared fixtures: digit k -> 16x16 grey image whose caption names k and its class
# ---------------------------------------------------------------------------------------------
_DIGITS: tuple[np.ndarray, np.ndarray] | None = None


def _digits() -> tuple[np.ndarray, np.ndarray]:
    global _DIGITS
    if _DIGITS is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        _DIGITS = (np.rint(bunch.images * 255 / 16).astype(np.uint8), bunch.target)
    return _DIGITS


def digit_array(k: int) -> np.ndarray:
    """uint8 (16, 16, 3): digit k upsampled x2 by pixel repetition (exact through PNG)."""
    img = _digits()[0][k].repeat(2, axis=0).repeat(2, axis=1)
    return np.stack([img] * 3, axis=-1)


def digit_label(k: int) -> int:
    return int(_digits()[1][k])


def digit_bytes(k: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(digit_array(k)[..., 0]).save(buf, fmt)
    return buf.getvalue()


def digit_caption(k: int) -> str:
    return f"sample {k}: a handwritten {DIGIT_CLASSNAMES[digit_label(k)]}"


def caption_sample(caption: str) -> int:
    """The k a caption written by :func:`digit_caption` names (checks its class name too)."""
    m = re.fullmatch(r"sample (\d+): a handwritten (\w+)", caption)
    assert m, caption
    k = int(m.group(1))
    assert m.group(2) == DIGIT_CLASSNAMES[digit_label(k)]
    return k


def image_sample(image: torch.Tensor) -> int:
    """The k whose digit image ``image`` (3, 16, 16) in [0, 1] is, exactly (digits are distinct)."""
    arr = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    matches = [k for k in range(60) if np.array_equal(arr, digit_array(k))]
    assert len(matches) == 1, matches
    return matches[0]


def corrupt_bytes() -> bytes:
    return random.Random(0).randbytes(300)


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return data[: len(data) // 2]


def test_fixture_digits_are_distinct():
    arrays = [digit_array(k).tobytes() for k in range(60)]
    assert len(set(arrays)) == 60


# ---------------------------------------------------------------------------------------------
# decoding and captions
# ---------------------------------------------------------------------------------------------
def reason_of(fn, *args) -> str:
    with pytest.raises(BadSampleError) as err:
        fn(*args)
    return err.value.reason


def test_decode_image_reasons(tmp_path):
    img = decode_image(digit_bytes(3))
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), digit_array(3))
    assert reason_of(decode_image, b"") == "empty_file"
    assert reason_of(decode_image, corrupt_bytes()) == "corrupt"
    assert reason_of(decode_image, truncated_jpeg()) == "truncated"
    assert reason_of(decode_image, str(tmp_path / "absent.jpg")) == "missing_file"
    (tmp_path / "empty.png").write_bytes(b"")
    assert reason_of(decode_image, str(tmp_path / "empty.png")) == "empty_file"
    (tmp_path / "ok.png").write_bytes(digit_bytes(4))
    assert np.array_equal(np.asarray(decode_image(tmp_path / "ok.png")), digit_array(4))
    # the truncated file itself opens fine: only the full decode (load) exposes it
    with Image.open(io.BytesIO(truncated_jpeg())) as im:
        assert im.size == (64, 64)


def test_caption_reasons(tmp_path):
    assert clean_caption("  a dog \n") == "a dog" and clean_caption(b"caf\xc3\xa9") == "café"
    assert reason_of(clean_caption, None) == "missing_caption"
    assert reason_of(clean_caption, " \n\t") == "empty_caption"
    assert reason_of(read_caption_file, None) == "missing_caption"
    assert reason_of(read_caption_file, str(tmp_path / "none.txt")) == "missing_caption"
    (tmp_path / "blank.txt").write_text("\n")
    assert reason_of(read_caption_file, str(tmp_path / "blank.txt")) == "empty_caption"
    (tmp_path / "c.txt").write_text("two\nlines\n")
    assert read_caption_file(str(tmp_path / "c.txt")) == "two\nlines"
    assert BadSampleError("something new").reason == "other"


# ---------------------------------------------------------------------------------------------
# collate
# ---------------------------------------------------------------------------------------------
def good(i: int) -> dict:
    return {"image": torch.full((3, 2, 2), float(i)), "index": i, "caption": f"c{i}"}


def test_collate_without_bad_samples_is_default_collate():
    samples = [good(i) for i in range(3)]
    a, b = collate_skip_bad(samples), default_collate(samples)
    assert a.keys() == b.keys() and BAD_KEY not in a
    assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    assert collate_skip_bad([1, 2]).tolist() == [1, 2]


def test_collate_drops_and_lists_bad_samples():
    bad = BadSample(7, "/x/7.jpg", "corrupt", "boom")
    batch = collate_skip_bad([good(0), bad, good(2)])
    assert batch["index"].tolist() == [0, 2] and batch["image"].shape == (2, 3, 2, 2)
    assert batch[BAD_KEY] == [bad]
    with pytest.raises(TooManyBadSamplesError, match=r"all 2 samples of a batch were bad \(corrupt: 2\).*/x/7.jpg"):
        collate_skip_bad([bad, bad])
    with pytest.raises(ValueError, match="dicts"):
        collate_skip_bad([1, bad])


class SomeBad(Dataset):
    """Index i is bad when i % 5 == 0 (reason by i % 2), good otherwise."""

    def __len__(self):
        return 40

    def __getitem__(self, i):
        if i % 5 == 0:
            return BadSample(i, f"/data/{i}.jpg", "corrupt" if i % 2 else "missing_caption")
        return good(i)


def test_counts_reach_the_main_process_from_workers():
    loader = build_train_loader(SomeBad(), batch_size=8, num_workers=2, seed=0, epoch=0)
    good_idx, bad_idx = [], []
    for batch in loader:
        good_idx += batch["index"].tolist()
        bad_idx += [b.index for b in batch.get(BAD_KEY, [])]
        assert len(batch["index"]) + len(batch.get(BAD_KEY, [])) == 8  # smaller by one per bad sample
    assert sorted(good_idx + bad_idx) == list(range(40))  # nothing dropped silently
    assert sorted(bad_idx) == list(range(0, 40, 5))


# ---------------------------------------------------------------------------------------------
# tracker and limit
# ---------------------------------------------------------------------------------------------
def test_allowed_count():
    assert BadSampleTracker(1000).allowed == 10
    assert BadSampleTracker(1000, max_bad_fraction=0.07).allowed == 70
    assert BadSampleTracker(1000, max_bad_samples=3).allowed == 3
    assert BadSampleTracker(99, max_bad_fraction=0.01).allowed == 0
    assert BadSampleTracker(10, max_bad_fraction=1.0).allowed == 10
    for kwargs in ({"max_bad_fraction": 1.5}, {"max_bad_samples": -1}, {"max_bad_samples": 0.5}):
        with pytest.raises(ValueError):
            BadSampleTracker(10, **kwargs)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        BadSampleTracker(0)


def records(n: int, reason: str = "corrupt", start: int = 0) -> list[BadSample]:
    return [BadSample(start + i, f"/d/{start + i}.jpg", reason, "why") for i in range(n)]


def test_tracker_counts_per_reason_and_stops_past_the_limit():
    t = BadSampleTracker(200, max_bad_fraction=0.02)  # 4 allowed
    t.update(None)
    t.update(records(2))
    t.update(records(2, "missing_caption", 10))
    assert t.epoch_count == 4 and t.postfix() == {"bad": 4}
    with pytest.raises(TooManyBadSamplesError) as err:
        t.update(records(1, "truncated", 20))
    msg = str(err.value)
    assert "5 read so far on this process (corrupt: 2, missing_caption: 2, truncated: 1)" in msg
    assert "more than the 4 allowed" in msg and "data.max_bad_fraction=0.02 of 200" in msg
    assert "/d/0.jpg (corrupt: why)" in msg and "/d/10.jpg (missing_caption: why)" in msg


def test_end_epoch_record_resets_and_checks_the_summed_count():
    t = BadSampleTracker(100, max_bad_fraction=0.03)  # 3 allowed
    t.update(records(2) + records(1, "weird-reason", 5))
    rec = t.end_epoch(4)
    assert rec == {
        "type": "data_epoch", "epoch": 4, "bad_samples": 3,
        "bad_by_reason": {"corrupt": 2, "other": 1}, "allowed_bad_samples": 3,
    }
    t.check_epoch(rec)
    assert t.epoch_count == 0 and t.total == 3 and t.postfix() == {}
    assert "epoch 4: skipped 3 bad samples (corrupt: 2, other: 1; 3 allowed)" in t.summary_line(rec)
    # two ranks with 2 each: locally fine, 4 > 3 in total -> the epoch check stops the run
    t.update(records(2))
    rec = t.end_epoch(5, reduce=lambda x: x * 2)
    assert rec["bad_samples"] == 4 and rec["bad_by_reason"] == {"corrupt": 4}
    with pytest.raises(TooManyBadSamplesError, match="4 in epoch 5 \\(all ranks\\)"):
        t.check_epoch(rec)
    assert len(REASONS) == len(set(REASONS))


def test_state_dict_carries_an_unfinished_epoch_across_a_restart(tmp_path):
    t = BadSampleTracker(100, max_bad_fraction=0.05)  # 5 allowed
    t.update(records(1) + records(1, "truncated", 3))
    rec = t.end_epoch(0, reset=False)  # a run stopped mid-epoch: logged, counts kept
    assert rec["bad_samples"] == 2 and t.epoch == 0 and t.epoch_count == 2
    state = t.state_dict(reduce=lambda x: x * 2)  # two ranks with the same counts
    assert state == {
        "epoch": 0, "bad_by_reason": {"corrupt": 2, "truncated": 2},
        "first_bad": [[0, "/d/0.jpg", "corrupt", "why"], [3, "/d/3.jpg", "truncated", "why"]],
    }
    torch.save(state, tmp_path / "s.pth")
    state = torch.load(tmp_path / "s.pth", weights_only=True)  # what a checkpoint load gives back

    main, other = BadSampleTracker(100, max_bad_fraction=0.05), BadSampleTracker(100, max_bad_fraction=0.05)
    main.load_state_dict(state, epoch=0)
    other.load_state_dict(state, epoch=0, keep_counts=False)
    assert main.epoch_counts == {"corrupt": 2, "truncated": 2} and other.epoch_count == 0
    assert [b.path for b in main.first_bad] == ["/d/0.jpg", "/d/3.jpg"] and other.first_bad == []
    main.update(records(1, start=50))  # 5 = the limit: still fine
    with pytest.raises(TooManyBadSamplesError, match="6 read so far"):
        main.update(records(1, start=60))
    # counts of an epoch that ended are not carried into the next one; no state = start from zero
    later = BadSampleTracker(100)
    later.load_state_dict(state, epoch=1)
    assert later.epoch == 1 and later.epoch_count == 0
    later.load_state_dict(None, epoch=2)
    assert later.epoch == 2 and later.epoch_count == 0
    # an epoch that ends moves on: the next checkpoint's counts belong to the next epoch
    t.end_epoch(0)
    assert t.epoch == 1 and t.state_dict()["bad_by_reason"] == {} and t.state_dict()["epoch"] == 1
    with pytest.raises(ValueError, match="bad_samples"):
        BadSampleTracker(10).load_state_dict(["not", "a", "state"], epoch=0)


def _two_rank_worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        t = BadSampleTracker(100, max_bad_fraction=1.0, max_bad_samples=2)
        t.update(records(1 + rank, "corrupt" if rank == 0 else "truncated"))  # 1 and 2: each within 2
        rec = t.end_epoch(0, reduce=all_reduce_sum)
        try:
            t.check_epoch(rec)
            stopped = False
        except TooManyBadSamplesError:
            stopped = True
        results[rank] = (rec["bad_samples"], rec["bad_by_reason"], stopped)
    finally:
        dist.destroy_process_group()


def test_two_ranks_sum_counts_and_stop_together():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.get_context("fork").Manager().dict()
    # fork, not spawn: a spawned child re-imports torch and this module (~20 s on 2 cores)
    mp.start_processes(_two_rank_worker, args=(port, results), nprocs=2, join=True, start_method="fork")
    expected = (3, {"corrupt": 1, "truncated": 2}, True)
    assert results[0] == expected and results[1] == expected
