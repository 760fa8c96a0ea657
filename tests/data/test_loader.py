import pytest
import torch
from torch.utils.data import Dataset

from hirl_like.data.digits import DigitsDataset
from hirl_like.data.loader import build_eval_loader, build_train_loader, eval_shard_range
from hirl_like.data.transforms import MultiCropTransform


class Indexed(Dataset):
    """Returns its index; records set_epoch calls."""

    def __init__(self, n):
        self.n = n
        self.epoch = None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"index": i}

    def set_epoch(self, epoch):
        self.epoch = epoch


def batches(loader):
    return [b["index"].tolist() for b in loader]


def test_train_loader_epoch_batches_and_resume():
    ds = Indexed(50)
    loader = build_train_loader(ds, batch_size=4, num_workers=0, seed=1, epoch=3, rank=1, world_size=2)
    assert ds.epoch == 3
    full = batches(loader)
    assert len(loader) == len(full) == 6  # 25 per rank -> 6 full batches, tail dropped
    assert all(len(b) == 4 for b in full)
    resumed = build_train_loader(
        ds, batch_size=4, num_workers=0, seed=1, epoch=3, rank=1, world_size=2, start_iteration=4
    )
    assert batches(resumed) == full[4:] and len(resumed) == 2
    other_rank = batches(build_train_loader(ds, 4, 0, seed=1, epoch=3, rank=0, world_size=2))
    assert set(sum(full, [])).isdisjoint(sum(other_rank, []))
    assert batches(build_train_loader(ds, 4, 0, seed=1, epoch=4, rank=1, world_size=2)) != full
    with pytest.raises(ValueError, match="start_iteration"):
        build_train_loader(ds, 4, 0, seed=1, epoch=3, start_iteration=13)
    with pytest.raises(ValueError, match="batch"):
        build_train_loader(ds, 64, 0, seed=1, epoch=0)


def test_resume_is_exact_and_worker_independent_on_digits():
    # Views and captions depend only on (seed, epoch, index): workers=0 vs 2 and a resumed run agree.
    crops = MultiCropTransform(global_crops=2, local_crops=1, global_size=12, local_size=6)
    ds = DigitsDataset("val", image_size=12, transform=crops, seed=0)
    kw = dict(batch_size=8, seed=2, epoch=1)
    ref = list(build_train_loader(ds, num_workers=0, **kw))
    with_workers = list(build_train_loader(ds, num_workers=2, start_iteration=len(ref) - 2, **kw))
    assert len(with_workers) == 2
    for a, b in zip(ref[-2:], with_workers):
        assert torch.equal(a["index"], b["index"]) and a["caption"] == b["caption"]
        for x, y in zip(a["global_crops"] + a["local_crops"], b["global_crops"] + b["local_crops"]):
            assert x.shape == (8, 3, *x.shape[-2:]) and torch.equal(x, y)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("n", [10, 11, 13, 2])
def test_eval_loader_covers_each_index_once(world, n):
    ds = Indexed(n)
    seen = []
    for r in range(world):
        loader = build_eval_loader(ds, batch_size=3, num_workers=0, rank=r, world_size=world)
        got = [i for b in batches(loader) for i in b]
        assert got == loader.sampler.indices == list(eval_shard_range(n, r, world))
        seen += got
    assert seen == list(range(n))  # rank order concatenation = dataset order, no padding
    sizes = [len(eval_shard_range(n, r, world)) for r in range(world)]
    assert max(sizes) - min(sizes) <= 1


def test_worker_threads_are_limited():
    class Threads(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.get_num_threads()

    loader = build_eval_loader(Threads(), batch_size=2, num_workers=2)
    assert [t for b in loader for t in b.tolist()] == [1, 1, 1, 1]
