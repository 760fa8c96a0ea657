import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hirl_like.evaluation.features import extract_features

WEIGHT = torch.arange(12, dtype=torch.float32).view(3, 4) / 10


def _dataset(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(n)
    images = torch.randn(n, 3, generator=g)
    return [{"image": images[i], "label": torch.tensor(i % 3), "index": torch.tensor(i)} for i in range(n)]


def _loader(samples: list[dict], indices: list[int], batch_size: int) -> list[dict]:
    batches = []
    for s in range(0, len(indices), batch_size):
        chunk = [samples[i] for i in indices[s : s + batch_size]]
        batches.append({k: torch.stack([c[k] for c in chunk]) for k in ("image", "label", "index")})
    return batches


def _forward(x: torch.Tensor) -> torch.Tensor:
    return x @ WEIGHT


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = {}
        for n in (7, 1):  # 4 + 3 samples; 1 + 0 samples (rank 1 has an empty shard)
            shard = list(range(rank, n, 2))  # a non-padding partition of the dataset
            results[n] = extract_features(_forward, _loader(_dataset(n), shard, batch_size=2), "cpu")
        # A padding sampler (like DistributedSampler's) repeats index 0 on rank 1.
        padded = [0, 2, 4, 6] if rank == 0 else [1, 3, 5, 0]
        try:
            extract_features(_forward, _loader(_dataset(7), padded, batch_size=2), "cpu")
            results["duplicate_error"] = ""
        except ValueError as e:
            results["duplicate_error"] = str(e)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    # Results are on disk; skip the interpreter teardown of torch & co (seconds on a busy CPU).
    # Only reached on success: an exception above propagates to mp.spawn as usual.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_sorts_by_index_and_matches_forward():
    samples = _dataset(7)
    feats, labels = extract_features(_forward, _loader(samples, [5, 2, 6, 0, 3, 1, 4], batch_size=3), "cpu")
    images = torch.stack([s["image"] for s in samples])
    torch.testing.assert_close(feats, images @ WEIGHT)
    assert labels.tolist() == [i % 3 for i in range(7)] and labels.dtype == torch.long


def test_two_process_gather_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for n in (7, 1):
        ref_feats, ref_labels = extract_features(_forward, _loader(_dataset(n), list(range(n)), batch_size=4), "cpu")
        for rank in (0, 1):
            feats, labels = torch.load(tmp_path / f"rank{rank}.pt")[n]
            assert feats.shape == (n, 4)  # no duplicates, nothing missing
            torch.testing.assert_close(feats, ref_feats, rtol=0, atol=0)
            assert torch.equal(labels, ref_labels)
    for rank in (0, 1):
        assert "seen more than once" in torch.load(tmp_path / f"rank{rank}.pt")["duplicate_error"]


def test_bad_batches_are_reported():
    with pytest.raises(ValueError, match=r"missing \['index'\]"):
        extract_features(_forward, [{"image": torch.zeros(2, 3), "label": torch.zeros(2)}], "cpu")
    with pytest.raises(ValueError, match="no batches"):
        extract_features(_forward, [], "cpu")
    with pytest.raises(ValueError, match="seen more than once"):
        extract_features(_forward, _loader(_dataset(3), [0, 1, 1], batch_size=2), "cpu")


def test_unreadable_evaluation_samples_are_an_error_not_a_smaller_split():
    from hirl_like.data.bad_samples import BadSample

    batch = {"image": torch.zeros(1, 3), "label": torch.zeros(1), "index": torch.zeros(1),
             "_bad": [BadSample(index=1, path="val/cat/1.jpg", reason="corrupt", detail="cannot identify image file")]}
    with pytest.raises(ValueError, match=r"unreadable samples: val/cat/1.jpg \(corrupt"):
        extract_features(_forward, [batch], "cpu")
