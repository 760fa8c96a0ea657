import io
import sys

import numpy as np
import pytest
import torch

from hirl_like.hirl import HierarchicalClusters, hierarchical_kmeans

faiss = pytest.importorskip("faiss")


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def nested_blobs(per_blob: int = 25, noise: float = 0.03, seed: int = 0):
    """4 super-clusters (orthogonal axes e_0..e_3 of R^8), each split into 2 sub-clusters tilted
    +-0.5 along its own spare axis e_{4+s}: 8 tight blobs, sub-pairs ~53 deg apart, supers 90 deg."""
    rs = np.random.RandomState(seed)
    points, sub, sup = [], [], []
    for s in range(4):
        for j in range(2):
            centre = np.zeros(8)
            centre[s], centre[4 + s] = 1.0, 0.5 if j == 0 else -0.5
            centre /= np.linalg.norm(centre)
            points.append(centre + noise * rs.randn(per_blob, 8))
            sub += [2 * s + j] * per_blob
            sup += [s] * per_blob
    return np.concatenate(points).astype(np.float32), np.array(sub), np.array(sup)


def same_partition(a, b) -> bool:
    """Equal up to relabelling: the (a, b) label pairs form a bijection."""
    a, b = np.asarray(a), np.asarray(b)
    return len(set(zip(a.tolist(), b.tolist()))) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("seed", [0, 1])
def test_recovers_nested_clusters(seed):
    x, sub, sup = nested_blobs()
    # faiss initialises from random points, so one restart can merge two blobs; many restarts (cheap
    # here) make the recovery independent of the seed. nredo=5 is HIRL's default.
    res = hierarchical_kmeans(x, [8, 4], seed=seed, nredo=50, epoch=7)
    assert res.num_levels == 2 and res.num_cluster == [8, 4] and res.num_samples == len(x) and res.epoch == 7
    assert same_partition(res.im2cluster[0], sub)
    assert same_partition(res.im2cluster[1], sup)
    # every sub-cluster points to the super-cluster holding its images
    assert torch.equal(res.cluster2cluster[0][res.im2cluster[0]], res.im2cluster[1])
    res.check_consistent()
    for lvl, k in enumerate([8, 4]):
        c = res.centroids[lvl]
        assert c.shape == (k, 8) and c.dtype == torch.float32
        torch.testing.assert_close(c.norm(dim=1), torch.ones(k))
        assert res.im2cluster[lvl].dtype == torch.long and res.im2cluster[lvl].shape == (len(x),)
    assert len(res.cluster2cluster) == 1 and res.cluster2cluster[0].shape == (8,)
    assert res.cluster2cluster[0].dtype == torch.long


def test_three_levels_compose_and_are_deterministic():
    x = np.random.RandomState(3).randn(120, 6).astype(np.float32) * 5.0  # scale: normalised inside
    a = hierarchical_kmeans(x, [12, 5, 2], seed=4, niter=10)
    b = hierarchical_kmeans(torch.from_numpy(x).double(), [12, 5, 2], seed=4, niter=10)  # tensor input
    for ta, tb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(ta, tb)
    a.check_consistent()
    assert torch.equal(a.cluster2cluster[1][a.cluster2cluster[0][a.im2cluster[0]]], a.im2cluster[2])
    assert [t.shape[0] for t in a.cluster2cluster] == [12, 5]


def test_single_level_and_one_cluster_per_point():
    x = np.random.RandomState(0).randn(10, 4).astype(np.float32)
    res = hierarchical_kmeans(x, [10], seed=0)
    assert res.cluster2cluster == [] and sorted(res.im2cluster[0].tolist()) == list(range(10))
    top = hierarchical_kmeans(x, [3, 1], seed=0)
    assert top.im2cluster[1].eq(0).all() and top.cluster2cluster[0].eq(0).all()


@pytest.mark.parametrize(
    "num_cluster,match",
    [
        ([], "num_cluster is empty"),
        ([0], r"num_cluster\[0\] must be >= 1"),
        ([4, -1], r"num_cluster\[1\] must be >= 1"),
        ([21], "more clusters than the 20 points"),
        ([4, 5], r"num_cluster\[1\]=5 is more clusters than the 4 centroids"),
        ([4, 2.5], r"num_cluster\[1\] must be an int"),
        (8, "must be a sequence"),
    ],
)
def test_validation_errors_come_before_any_work(num_cluster, match, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # any attempt to cluster would raise ImportError
    with pytest.raises(ValueError, match=match) as info:
        hierarchical_kmeans(np.zeros((20, 3), np.float32), num_cluster, seed=0)
    assert "\n" not in str(info.value)


def test_bad_features_and_iterations():
    with pytest.raises(ValueError, match="2-D"):
        hierarchical_kmeans(np.zeros(5, np.float32), [2], seed=0)
    with pytest.raises(ValueError, match="NaN"):
        hierarchical_kmeans(np.full((5, 2), np.nan, np.float32), [2], seed=0)
    with pytest.raises(ValueError, match="niter"):
        hierarchical_kmeans(np.ones((5, 2), np.float32), [2], seed=0, niter=0)


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="faiss has a GPU here")
def test_forcing_gpu_without_one_is_an_error():
    with pytest.raises(ValueError, match="no GPU"):
        hierarchical_kmeans(np.ones((5, 2), np.float32), [2], seed=0, use_gpu=True)


def test_state_dict_round_trip_is_tensors_only():
    x = np.random.RandomState(1).randn(30, 4).astype(np.float32)
    res = hierarchical_kmeans(x, [6, 3, 2], seed=2, epoch=11)
    state = res.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert set(state) == {
        "centroids.0", "centroids.1", "centroids.2", "im2cluster.0", "im2cluster.1", "im2cluster.2",
        "cluster2cluster.0", "cluster2cluster.1", "epoch",
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    back = HierarchicalClusters.from_state_dict(torch.load(buf, weights_only=True))
    assert back.epoch == 11 and back.num_cluster == [6, 3, 2]
    for key, value in back.state_dict().items():
        assert torch.equal(value, state[key]), key
    bad = dict(state)
    del bad["cluster2cluster.1"]
    with pytest.raises(ValueError, match="missing keys"):
        HierarchicalClusters.from_state_dict(bad)


def test_dataclass_checks_shapes_and_consistency():
    c = [torch.randn(4, 3), torch.randn(2, 3)]
    with pytest.raises(ValueError, match="cluster2cluster"):
        HierarchicalClusters(c, [torch.zeros(5, dtype=torch.long)] * 2, [])
    with pytest.raises(ValueError, match=r"cluster2cluster\[0\]"):
        HierarchicalClusters(c, [torch.zeros(5, dtype=torch.long)] * 2, [torch.zeros(3, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"im2cluster\[1\]"):
        HierarchicalClusters(c, [torch.zeros(5, dtype=torch.long), torch.zeros(5)], [torch.zeros(4, dtype=torch.long)])
    broken = HierarchicalClusters(
        c, [torch.tensor([0, 1, 2, 3, 0]), torch.zeros(5, dtype=torch.long)], [torch.tensor([0, 0, 1, 1])]
    )
    with pytest.raises(ValueError, match="!="):
        broken.check_consistent()
