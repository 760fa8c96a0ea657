import math

import numpy as np
import pytest
import torch

from hirl_like.hirl import HierarchicalClusters, hierarchical_kmeans
from hirl_like.losses.semantic_path import (
    SPD_EPS,
    SemanticPathLoss,
    sample_negative_paths,
    semantic_path_discrimination,
)
from hirl_like.registry import LOSSES
from tests.losses._reference import dot

EPS = 1e-6  # HIRL.eps, hirl-team/HIRL hirl/pipelines/hirl.py


def random_clusters(num_cluster=(6, 3, 2), n=20, d=5, seed=0) -> HierarchicalClusters:
    """A consistent random hierarchy: random unit centroids, random parents, composed assignments."""
    g = torch.Generator().manual_seed(seed)
    centroids = [torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1) for k in num_cluster]
    c2c = [torch.randint(k_up, (k,), generator=g) for k, k_up in zip(num_cluster[:-1], num_cluster[1:])]
    im2cluster = [torch.randint(num_cluster[0], (n,), generator=g)]
    for a in c2c:
        im2cluster.append(a[im2cluster[-1]])
    return HierarchicalClusters(centroids, im2cluster, c2c, epoch=0)


def unit(v):
    norm = torch.sqrt(dot(v, v))
    return [v[k] / norm for k in range(v.shape[0])]


def naive_spd(z, clusters, index, level0_draw):
    """Per-sample python loop over levels and sampled paths (HIRL's averaging). Returns (loss, acc)."""
    b_size, n_levels, _ = z.shape
    total, correct = 0.0, 0
    for b in range(b_size):
        zs = [unit(z[b, lvl]) for lvl in range(n_levels)]
        pos = [int(clusters.im2cluster[lvl][index[b]]) for lvl in range(n_levels)]

        def score(path):
            s = 1.0
            for lvl, c in enumerate(path):
                s = s * (dot(torch.stack(zs[lvl]), clusters.centroids[lvl][c]) + 1) / 2
            return s

        s_pos = score(pos)
        pos_term = -torch.log(s_pos + EPS)
        neg_sum, n_true, beaten = 0.0, 0, False
        for c0 in level0_draw[b].tolist():
            path = [c0]
            for a in clusters.cluster2cluster:
                path.append(int(a[path[-1]]))
            if path == pos:
                continue  # a false negative: ignored
            s_neg = score(path)
            neg_sum = neg_sum + -torch.log(1 - s_neg + EPS)
            n_true += 1
            beaten = beaten or float(s_neg.detach()) >= float(s_pos.detach())
        neg_term = neg_sum / (n_true + EPS)  # 0 when the sample has no true negative
        total = total + (pos_term + neg_term) / 2
        correct += not beaten
    return total / b_size, correct / b_size


def test_matches_naive_loop_with_the_same_negatives():
    clusters = random_clusters()
    b_size, n_neg = 5, 9
    index = torch.tensor([0, 3, 7, 7, 19])
    z = torch.randn(b_size, 3, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = SemanticPathLoss(num_neg_path=n_neg)(z, index, clusters, generator=torch.Generator().manual_seed(42))

    draw = torch.randint(6, (b_size, n_neg), generator=torch.Generator().manual_seed(42))  # the documented draw
    ref_loss, ref_acc = naive_spd(z, clusters, index, draw)
    torch.testing.assert_close(out["loss"], ref_loss, rtol=1e-5, atol=1e-6)
    assert out["spd_accuracy"].item() == pytest.approx(ref_acc)
    grad = torch.autograd.grad(out["loss"], z)[0]
    ref_grad = torch.autograd.grad(ref_loss, z)[0]
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["loss"].detach(), (out["pos_loss"] + out["neg_loss"]) / 2)

    # the draw above holds both true and false negatives, so the masking was exercised
    neg = sample_negative_paths(clusters.cluster2cluster, 6, b_size, n_neg, torch.Generator().manual_seed(42))
    false_neg = (neg == clusters.paths(index).unsqueeze(1)).all(-1)
    assert false_neg.any() and not false_neg.all()
    assert out["true_negative_frac"].item() == pytest.approx(1 - false_neg.float().mean().item())


def test_sample_without_true_negatives_counts_zero_in_the_batch_mean():
    """Hand-given paths: sample 0's negatives all equal its positive, sample 1 has one true negative."""
    clusters = random_clusters(num_cluster=(4, 2), n=6, d=3, seed=2)
    index = torch.tensor([1, 4])
    pos = clusters.paths(index)
    other = [(c0, int(clusters.cluster2cluster[0][c0])) for c0 in range(4)]
    other = next(p for p in other if list(p) != pos[1].tolist())
    neg = torch.stack([pos[0].expand(3, 2), torch.tensor([list(other), pos[1].tolist(), pos[1].tolist()])])
    z = torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out = semantic_path_discrimination(z, clusters.centroids, pos, neg)
    draw = neg[:, :, 0]
    ref_loss, ref_acc = naive_spd(z, clusters, index, draw)
    torch.testing.assert_close(out["loss"], ref_loss, rtol=1e-5, atol=1e-6)
    assert out["spd_accuracy"].item() == pytest.approx(ref_acc)


def test_one_cluster_per_level_gives_only_the_positive_term():
    """Every sampled negative equals the positive: finite loss, (mean_b -log(p_pos + eps)) / 2."""
    centroids = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])]
    clusters = HierarchicalClusters(
        centroids, [torch.zeros(8, dtype=torch.long)] * 2, [torch.zeros(1, dtype=torch.long)]
    )
    z = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = SemanticPathLoss(num_neg_path=16)(z, torch.arange(4), clusters)
    zn = torch.nn.functional.normalize(z.detach(), dim=-1)
    p_pos = (zn[:, 0, 0] + 1) / 2 * (zn[:, 1, 1] + 1) / 2
    expected = (-torch.log(p_pos + EPS)).mean() / 2
    assert torch.isfinite(out["loss"])
    torch.testing.assert_close(out["loss"].detach(), expected)
    assert out["neg_loss"].item() == 0.0 and out["true_negative_frac"].item() == 0.0
    assert out["spd_accuracy"].item() == 1.0  # nothing to beat
    out["loss"].backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_gradient_flows_to_each_level_embedding():
    clusters = random_clusters()
    zs = [torch.randn(4, 5, requires_grad=True) for _ in range(3)]  # a list of (B, D), one per level
    out = SemanticPathLoss(num_neg_path=10)(zs, torch.arange(4), clusters, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    for z in zs:
        assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    for key in ("pos_loss", "neg_loss", "spd_accuracy", "true_negative_frac"):
        assert out[key].ndim == 0 and not out[key].requires_grad


def test_accuracy_extremes():
    clusters = random_clusters(num_cluster=(5, 2), n=10, d=4, seed=5)
    index = torch.arange(6)
    pos = clusters.paths(index)
    aligned = torch.stack([clusters.centroids[lvl][pos[:, lvl]] for lvl in range(2)], dim=1)  # p_pos = 1
    loss = SemanticPathLoss(num_neg_path=20)
    gen = torch.Generator().manual_seed(4)
    assert loss(aligned, index, clusters, gen)["spd_accuracy"].item() == 1.0
    worst = loss(-aligned, index, clusters, gen)
    assert worst["spd_accuracy"].item() == 0.0  # p_pos = 0 <= every true negative
    assert torch.isfinite(worst["loss"])


def test_negative_paths_follow_the_hierarchy_and_the_generator():
    clusters = random_clusters()
    a = sample_negative_paths(clusters.cluster2cluster, 6, 4, 50, torch.Generator().manual_seed(9))
    b = sample_negative_paths(clusters.cluster2cluster, 6, 4, 50, torch.Generator().manual_seed(9))
    assert a.shape == (4, 50, 3) and a.dtype == torch.long and torch.equal(a, b)
    for lvl, c2c in enumerate(clusters.cluster2cluster):
        assert torch.equal(c2c[a[..., lvl]], a[..., lvl + 1])
    assert set(a[..., 0].flatten().tolist()) == set(range(6))  # 200 uniform draws hit all 6


def test_hirl_style_cluster_result_dict_and_registry():
    clusters = random_clusters()
    z = torch.randn(3, 3, 5)
    as_dict = {"centroids": clusters.centroids, "im2cluster": clusters.im2cluster,
               "cluster2cluster": clusters.cluster2cluster}
    loss = LOSSES.build({"name": "semantic_path", "num_neg_path": 4})
    assert isinstance(loss, SemanticPathLoss) and LOSSES.get("SemanticPathLoss") is SemanticPathLoss
    assert loss.eps == SPD_EPS == EPS
    one = loss(z, torch.arange(3), clusters, generator=torch.Generator().manual_seed(1))
    two = loss(z, torch.arange(3), as_dict, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(one["loss"], two["loss"])


@pytest.mark.parametrize("cfg", [{"num_neg_path": 0}, {"num_neg_path": 2.5}, {"eps": 0.0}])
def test_bad_arguments(cfg):
    with pytest.raises(ValueError, match=next(iter(cfg))):
        LOSSES.build({"name": "semantic_path", **cfg})


def test_shape_errors():
    clusters = random_clusters()
    loss = SemanticPathLoss(num_neg_path=2)
    with pytest.raises(ValueError, match="L=3"):
        loss(torch.randn(2, 2, 5), torch.arange(2), clusters)
    with pytest.raises(ValueError, match="embedding dim"):
        loss(torch.randn(2, 3, 4), torch.arange(2), clusters)
    with pytest.raises(ValueError, match="index"):
        loss(torch.randn(2, 3, 5), torch.arange(3), clusters)


def test_end_to_end_with_hierarchical_kmeans():
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        feats = np.random.RandomState(0).randn(40, 6).astype(np.float32)
        clusters = hierarchical_kmeans(feats, [8, 3], seed=0, niter=5)
    finally:
        faiss.omp_set_num_threads(threads)
    index = torch.tensor([0, 5, 39])
    z = torch.from_numpy(feats[index.numpy()]).unsqueeze(1).repeat(1, 2, 1).requires_grad_()
    out = SemanticPathLoss(num_neg_path=32)(z, index, clusters, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(out["loss"].item())
    out["loss"].backward()
    assert torch.isfinite(z.grad).all()
