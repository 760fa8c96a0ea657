"""k-means clustering of frozen features and the clustering metrics of HIRL / ProtoCLIP.

Protocol: k-means (k = number of classes) on L2-normalised features, then compare the cluster
assignments with the ground-truth labels by NMI, AMI, ARI and accuracy after the best
one-to-one matching of clusters to classes (Hungarian algorithm on the contingency table).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Labels = Tensor | np.ndarray | Sequence[int]  # any 1-D integer labelling


def _as_numpy_labels(x: Labels, name: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {arr.shape}.")
    if arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}.")
    return arr.astype(np.int64)


def _check_pair(labels: Labels, assignments: Labels) -> tuple[np.ndarray, np.ndarray]:
    y = _as_numpy_labels(labels, "labels")
    a = _as_numpy_labels(assignments, "assignments")
    if y.shape != a.shape:
        raise ValueError(f"labels and assignments must have the same length; got {y.shape[0]} and {a.shape[0]}.")
    if y.shape[0] == 0:
        raise ValueError("labels and assignments are empty.")
    return y, a


def kmeans(
    features: Tensor,
    num_clusters: int,
    restarts: int = 5,
    iterations: int = 100,
    seed: int = 0,
) -> Tensor:
    """Cluster (N, D) features into ``num_clusters`` groups with faiss k-means.

    Features are L2-normalised first (the protocol clusters directions, like the cosine k-NN);
    the centroids are ordinary Euclidean means (``spherical=False``). faiss runs ``restarts``
    independent initialisations (``nredo``) and keeps the one with the lowest objective (sum of
    squared distances). Every point is used for training: faiss' default subsampling to 256
    points per centroid is switched off so that the result does not depend on a hidden sample.

    Returns:
        (N,) int64 cluster index of every feature, in [0, num_clusters).
    """
    import faiss  # imported lazily: only k-means needs it

    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {tuple(features.shape)}.")
    n, d = features.shape
    if not 1 <= num_clusters <= n:
        raise ValueError(f"num_clusters must be in [1, N={n}], got {num_clusters}.")
    if restarts < 1 or iterations < 1:
        raise ValueError(f"restarts and iterations must be >= 1, got restarts={restarts}, iterations={iterations}.")
    x = F.normalize(features.detach().float(), dim=1).cpu().contiguous().numpy()
    km = faiss.Kmeans(
        d,
        num_clusters,
        niter=iterations,
        nredo=restarts,
        seed=seed,
        spherical=False,
        verbose=False,
        min_points_per_centroid=1,  # silence the "too few points" warning on small eval sets
        max_points_per_centroid=math.ceil(n / num_clusters) + 1,  # no subsampling
    )
    km.train(x)
    _, assignments = km.index.search(x, 1)
    return torch.from_numpy(assignments[:, 0].astype(np.int64))


def contingency_table(labels: Labels, assignments: Labels) -> np.ndarray:
    """(num_clusters, num_classes) counts; rows/columns follow the sorted unique values."""
    y, a = _check_pair(labels, assignments)
    _, y_idx = np.unique(y, return_inverse=True)
    _, a_idx = np.unique(a, return_inverse=True)
    table = np.zeros((a_idx.max() + 1, y_idx.max() + 1), dtype=np.int64)
    np.add.at(table, (a_idx, y_idx), 1)
    return table


def hungarian_accuracy(labels: Labels, assignments: Labels) -> float:
    """Clustering accuracy (%) under the best one-to-one cluster -> class matching.

    acc = max_{matching m} sum_c table[c, m(c)] / N, solved by
    ``scipy.optimize.linear_sum_assignment`` on the contingency table. With more clusters than
    classes the surplus clusters stay unmatched (their points count as errors), and vice versa.
    """
    from scipy.optimize import linear_sum_assignment

    table = contingency_table(labels, assignments)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return 100.0 * float(table[rows, cols].sum()) / float(table.sum())


def cluster_metrics(labels: Labels, assignments: Labels) -> dict[str, float]:
    """NMI, AMI, ARI and Hungarian accuracy, ALL IN PERCENT (0..100; ARI and AMI can dip below 0).

    Returns ``{"nmi", "ami", "ari", "acc"}`` from scikit-learn's
    normalized_mutual_info_score (arithmetic normalisation), adjusted_mutual_info_score,
    adjusted_rand_score and :func:`hungarian_accuracy`.
    """
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

    y, a = _check_pair(labels, assignments)
    return {
        "nmi": 100.0 * float(normalized_mutual_info_score(y, a)),
        "ami": 100.0 * float(adjusted_mutual_info_score(y, a)),
        "ari": 100.0 * float(adjusted_rand_score(y, a)),
        "acc": hungarian_accuracy(y, a),
    }
