import itertools

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


def test_random_labelling_scores_near_zero():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (3000,), generator=g)
    assignments = torch.randint(0, 5, (3000,), generator=g)
    m = cluster_metrics(labels, assignments)
    assert abs(m["ami"]) < 1.0 and abs(m["ari"]) < 1.0 and m["nmi"] < 1.0
    assert m["acc"] < 25.0  # chance is 20%; the best matching adds a little


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
