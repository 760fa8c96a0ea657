import pytest
import torch
from torch.utils.data import DistributedSampler

from hirl_like.data.sampler import ResumableDistributedSampler


def rank_lists(n, world, **kw):
    return [list(ResumableDistributedSampler(n, num_replicas=world, rank=r, **kw)) for r in range(world)]


@pytest.mark.parametrize("n, world", [(10, 1), (10, 3), (17, 4), (3, 2)])
@pytest.mark.parametrize("drop_last", [True, False])
def test_unshuffled_matches_torch_distributed_sampler(n, world, drop_last):
    # Without shuffling the order is fixed, so torch's DistributedSampler is an exact reference.
    for r in range(world):
        ours = list(ResumableDistributedSampler(n, world, r, shuffle=False, drop_last=drop_last))
        ref = list(DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=False, drop_last=drop_last))
        assert ours == ref


def test_disjoint_equal_length_ranks():
    n, world = 103, 4
    lists = rank_lists(n, world, seed=5)
    assert all(len(x) == 25 for x in lists)
    flat = [i for x in lists for i in x]
    assert len(set(flat)) == len(flat) == 100 and set(flat) <= set(range(n))
    # Without drop_last: padded by wrapping, every index appears, lengths equal.
    lists = rank_lists(n, world, seed=5, drop_last=False)
    assert all(len(x) == 26 for x in lists)
    flat = [i for x in lists for i in x]
    assert set(flat) == set(range(n)) and len(flat) == 104


def test_order_depends_only_on_seed_and_epoch():
    a = ResumableDistributedSampler(50, 2, 1, seed=3)
    b = ResumableDistributedSampler(50, 2, 1, seed=3)
    torch.manual_seed(99)  # the global RNG plays no part
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b) and list(a) == list(a)
    b.set_epoch(5)
    assert list(a) != list(b)
    c = ResumableDistributedSampler(50, 2, 1, seed=4)
    c.set_epoch(4)
    assert list(a) != list(c)
    # seed and epoch do not commute
    d, e = ResumableDistributedSampler(50, seed=1), ResumableDistributedSampler(50, seed=0)
    e.set_epoch(1)
    assert list(d) != list(e)
    assert sorted(d) == list(range(50))  # one rank, 50 samples: a permutation


def test_resume_yields_exact_tail():
    s = ResumableDistributedSampler(40, num_replicas=3, rank=2, seed=11)
    s.set_epoch(7)
    full = list(s)
    assert len(s) == len(full) == 13
    for k in (0, 1, 6, 13):
        s.set_epoch(7, start_index=k)
        assert list(s) == full[k:] and len(s) == 13 - k
    state = s.state_dict()
    fresh = ResumableDistributedSampler(40, num_replicas=3, rank=2, seed=11)
    fresh.load_state_dict(state)
    assert list(fresh) == full[13:]
    with pytest.raises(ValueError, match="start_index"):
        s.set_epoch(7, start_index=14)
    with pytest.raises(ValueError, match="seed"):
        ResumableDistributedSampler(40, 3, 2, seed=12).load_state_dict(state)


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        ResumableDistributedSampler(10, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="dataset_size"):
        ResumableDistributedSampler(0)
    with pytest.raises(ValueError, match="drop_last"):
        ResumableDistributedSampler(2, num_replicas=3, rank=0)
