import itertools
import math

import numpy as np
import pytest
import torch

from hirl_like.evaluation.clustering import cluster_metrics, contingency_table, hungarian_accuracy, kmeans


def _bruteforce_accuracy(labels, assignments):
    """Try every injective cluster -> class map (small cases only)."""
    clusters, classes = sorted(set(assignments)), sorted(set(labels))
    best = 0
    pad = [None] * max(0, len(clusters) - len(classes))
    for perm in itertools.permutations(classes + pad, len(clusters)):
        mapping = dict(zip(clusters, perm))
        best = max(best, sum(mapping[a] == y for a, y in zip(assignments, labels)))
    return 100.0 * best / len(labels)


def test_perfect_and_permuted_labellings_score_100():
    labels = torch.arange(60) % 6
    perfect = cluster_metrics(labels, labels)
    permuted = cluster_metrics(labels, torch.tensor([3, 5, 0, 1, 4, 2])[labels] + 10)  # renamed clusters
    for metrics in (perfect, permuted):
        assert set(metrics) == {"nmi", "ami", "ari", "acc"}
        for value in metrics.values():
            assert value == pytest.approx(100.0)


def _reference_nmi_ari(labels, assignments):
    """NMI (arithmetic mean of the entropies) and ARI from their textbook formulas, in %."""
    n = len(labels)
    pairs = {}
    for y, a in zip(labels, assignments):
        pairs[(y, a)] = pairs.get((y, a), 0) + 1
    rows = {y: labels.count(y) for y in set(labels)}
    cols = {a: assignments.count(a) for a in set(assignments)}
    mi = sum(c / n * math.log(c * n / (rows[y] * cols[a])) for (y, a), c in pairs.items())
    entropy = lambda counts: -sum(c / n * math.log(c / n) for c in counts.values())  # noqa: E731
    nmi = mi / ((entropy(rows) + entropy(cols)) / 2)
    comb = lambda c: c * (c - 1) / 2  # noqa: E731
    index = sum(comb(c) for c in pairs.values())
    sum_rows, sum_cols = sum(comb(c) for c in rows.values()), sum(comb(c) for c in cols.values())
    expected = sum_rows * sum_cols / comb(n)
    ari = (index - expected) / ((sum_rows + sum_cols) / 2 - expected)
    return 100.0 * nmi, 100.0 * ari


def test_random_labelling_matches_the_formulas_and_chance():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (3000,), generator=g)
    assignments = torch.randint(0, 5, (3000,), generator=g)
    m = cluster_metrics(labels, assignments)
    nmi, ari = _reference_nmi_ari(labels.tolist(), assignments.tolist())
    assert m["nmi"] == pytest.approx(nmi) and m["ari"] == pytest.approx(ari)
    assert m["acc"] == pytest.approx(_bruteforce_accuracy(labels.tolist(), assignments.tolist()))
    # AMI and ARI are adjusted for chance: their expectation under independent labellings is 0;
    # 3000 samples put them within about one point of it (NMI is not adjusted: it stays positive).
    assert abs(m["ami"]) < 1.0 and abs(m["ari"]) < 1.0 and 0.0 < m["nmi"]


def test_hungarian_beats_greedy_on_hand_made_table():
    # Contingency (rows = clusters, cols = classes): [[3, 2], [2, 0]].
    # Greedy takes cluster0->class0 (3) then cluster1->class1 (0) = 3; optimum is 2 + 2 = 4 of 7.
    labels = [0, 0, 0, 1, 1, 0, 0]
    assignments = [0, 0, 0, 0, 0, 1, 1]
    np.testing.assert_array_equal(contingency_table(labels, assignments), [[3, 2], [2, 0]])
    assert hungarian_accuracy(labels, assignments) == pytest.approx(400.0 / 7)


@pytest.mark.parametrize("n_clusters,n_classes", [(3, 3), (5, 3), (2, 4)])
def test_hungarian_matches_bruteforce_with_unequal_counts(n_clusters, n_classes):
    rng = np.random.default_rng(n_clusters * 10 + n_classes)
    labels = rng.integers(0, n_classes, 40).tolist()
    assignments = rng.integers(0, n_clusters, 40).tolist()
    assert hungarian_accuracy(torch.tensor(labels), torch.tensor(assignments)) == pytest.approx(
        _bruteforce_accuracy(labels, assignments)
    )


def test_kmeans_recovers_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(8)[:4] * 10  # 4 orthogonal directions: well separated after L2 normalisation
    labels = torch.arange(200) % 4
    features = centers[labels] + 0.3 * torch.randn(200, 8, generator=g)
    assignments = kmeans(features, num_clusters=4, restarts=3, iterations=20, seed=0)
    assert assignments.shape == (200,) and assignments.dtype == torch.long
    assert assignments.min() >= 0 and assignments.max() < 4
    assert hungarian_accuracy(labels, assignments) == pytest.approx(100.0)
    assert torch.equal(assignments, kmeans(features, num_clusters=4, restarts=3, iterations=20, seed=0))


def test_invalid_inputs():
    with pytest.raises(ValueError, match="same length"):
        cluster_metrics(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans(torch.randn(5, 3), num_clusters=6)
