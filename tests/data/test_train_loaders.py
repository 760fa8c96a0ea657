"""TrainLoaders (the trainer's loaders, issue 18 item 5): one DataLoader for the run whose workers
persist across epochs, giving exactly the batches of a per-epoch build_train_loader (order, epoch
views and captions, mid-epoch resume), and a per-epoch StreamLoader for streaming data."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import Dataset

from hirl_like.data.digits import DigitsDataset
from hirl_like.data.loader import PREFETCH_FACTOR, StreamLoader, TrainLoaders, build_train_loader
from hirl_like.data.transforms import MultiCropTransform


class EpochIndexed(Dataset):
    """Returns its index, the epoch its copy is at and the process that loaded it."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "epoch": self.epoch, "pid": os.getpid()}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def same_batches(a, b) -> None:
    a, b = list(a), list(b)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            elif isinstance(x[key], list) and x[key] and isinstance(x[key][0], torch.Tensor):
                assert all(torch.equal(u, v) for u, v in zip(x[key], y[key])), key
            else:
                assert x[key] == y[key], key


def test_workers_persist_across_epochs_and_see_each_epoch():
    ds = EpochIndexed(40)
    loaders = TrainLoaders(ds, batch_size=4, num_workers=2, seed=3, rank=1, world_size=2)
    pids, seen = set(), {}
    for epoch in (0, 1, 2):
        loader = loaders.for_epoch(epoch)
        assert len(loader) == 5  # 20 per rank
        batches = list(loader)
        assert all(b["epoch"].tolist() == [epoch] * 4 for b in batches)  # the workers' copies switched
        pids |= {p for b in batches for p in b["pid"].tolist()}
        seen[epoch] = [b["index"].tolist() for b in batches]
        reference = build_train_loader(EpochIndexed(40), 4, 0, seed=3, epoch=epoch, rank=1, world_size=2)
        assert seen[epoch] == [b["index"].tolist() for b in reference]
    assert len(pids) == 2 and os.getpid() not in pids  # the same two workers for all three epochs
    assert seen[0] != seen[1]
    loaders.close()


def test_resume_and_views_equal_the_per_epoch_loader_on_digits():
    crops = MultiCropTransform(global_crops=2, local_crops=1, global_size=12, local_size=6)
    kw = dict(batch_size=8, seed=2)
    loaders = TrainLoaders(DigitsDataset("val", image_size=12, transform=crops, seed=0), num_workers=2, **kw)
    for epoch, start in ((0, 0), (1, 0), (1, 30), (2, 5)):
        ref = build_train_loader(DigitsDataset("val", image_size=12, transform=crops, seed=0), num_workers=0,
                                 epoch=epoch, start_iteration=start, **kw)
        loader = loaders.for_epoch(epoch, start)
        assert len(loader) == len(ref)
        same_batches(loader, ref)
    with pytest.raises(ValueError, match="start_iteration"):
        loaders.for_epoch(0, 10_000)
    loaders.close()


def test_num_workers_zero_and_defaults():
    ds = EpochIndexed(12)
    loaders = TrainLoaders(ds, batch_size=4, num_workers=0, seed=0)
    assert [b["index"].tolist() for b in loaders.for_epoch(1, 1)] == [
        b["index"].tolist() for b in build_train_loader(EpochIndexed(12), 4, 0, seed=0, epoch=1, start_iteration=1)]
    assert ds.epoch == 1 and loaders.sampler.epoch == 1
    with_workers = TrainLoaders(ds, batch_size=4, num_workers=2, seed=0)._loader
    assert with_workers.persistent_workers and with_workers.prefetch_factor == PREFETCH_FACTOR == 2
    assert not TrainLoaders(ds, batch_size=4, num_workers=2, seed=0, persistent_workers=False)._loader.persistent_workers
    with pytest.raises(ValueError, match="batch"):
        TrainLoaders(ds, batch_size=64, num_workers=0, seed=0)


def test_streaming_data_gets_a_loader_per_epoch(tmp_path):
    import hirl_like.data.loader as loader_module
    from tests.data.test_webdataset_shards import N, SIZES, pattern, sample_members, shards

    import webdataset as wds

    folder = tmp_path / "shards"
    folder.mkdir()
    k = 0
    for s, size in enumerate(SIZES):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as writer:
            for _ in range(size):
                writer.write(sample_members(k))
                k += 1
    ds = shards(pattern(folder), shuffle_buffer=4)
    loaders = TrainLoaders(ds, batch_size=4, num_workers=2, seed=0)
    first, second = loaders.for_epoch(0), loaders.for_epoch(1)
    assert isinstance(first, StreamLoader) and first is not second and len(first) == N // 4
    assert not second.persistent_workers and second.prefetch_factor == loader_module.PREFETCH_FACTOR
    ref = build_train_loader(shards(pattern(folder), shuffle_buffer=4), 4, 2, seed=0, epoch=1)
    assert [b["index"].tolist() for b in second] == [b["index"].tolist() for b in ref]


def test_one_iteration_spans_epochs_and_restarts_only_when_the_position_jumps():
    ds = EpochIndexed(24)
    loaders = TrainLoaders(ds, batch_size=4, num_workers=2, seed=1)
    first = loaders.for_epoch(0)
    it = loaders._iterator
    got = [b["index"].tolist() for b in first]
    assert loaders._position == (1, 0)
    second = [b["index"].tolist() for b in loaders.for_epoch(1)]
    assert loaders._iterator is it  # continued: epoch 1's first batches were prefetched during epoch 0
    assert got + second == [b["index"].tolist() for e in (0, 1)
                            for b in build_train_loader(EpochIndexed(24), 4, 0, seed=1, epoch=e)]
    view = loaders.for_epoch(2)
    for _, _ in zip(range(2), view):  # stopped mid-epoch, like a run that hits max_iterations
        pass
    assert loaders._position == (2, 2)
    resumed = [b["index"].tolist() for b in loaders.for_epoch(2, 2)]
    assert loaders._iterator is it  # the position it stopped at: continued
    assert resumed == [b["index"].tolist() for b in build_train_loader(EpochIndexed(24), 4, 0, seed=1, epoch=2,
                                                                        start_iteration=2)]
    jumped = [b["index"].tolist() for b in loaders.for_epoch(5, 1)]  # a jump restarts the iteration
    assert jumped == [b["index"].tolist() for b in build_train_loader(EpochIndexed(24), 4, 0, seed=1, epoch=5,
                                                                       start_iteration=1)]
    assert list(loaders.for_epoch(5, 6)) == [] and len(loaders.for_epoch(5, 6)) == 0
    with pytest.raises(RuntimeError, match="iterated already"):
        list(view)
    loaders.close()
