"""Hierarchical k-means for HIRL: a tree of prototypes over the whole training set.

Levels are 0-based here (level 0 = the finest, ``num_cluster[0]`` centroids). Level 0 clusters the
N L2-normalised image features ``x_i`` into ``K_0`` centroids ``mu^0``; level ``l+1`` clusters the
``K_l`` L2-normalised level-``l`` centroids ``hat mu^l`` into ``K_{l+1}`` centroids ``mu^{l+1}``, so
every image has a *semantic path* ``(c_0, ..., c_{L-1})`` with ``c_{l+1} = cluster2cluster[l][c_l]``::

    im2cluster[0][i]      = argmin_k ||x_i - mu^0_k||                 (N,)
    cluster2cluster[l][j] = argmin_k ||hat mu^l_j - mu^{l+1}_k||      (K_l,)   for l < L-1
    im2cluster[l+1]       = cluster2cluster[l][im2cluster[l]]         (N,)

The stored centroids are L2-normalised after each level (the loss compares them by cosine).
Each level is a plain (Euclidean) faiss k-means with ``nredo`` restarts, seeded with ``seed + l``,
as in the HIRL code (hirl-team/HIRL, ``hirl/utils/clustering.py:run_hkmeans``, which seeds level
``l`` with ``l`` and uses 5 restarts). Unlike that code every point is used for training (faiss'
subsampling to a fixed number of points per centroid is switched off), so the result does not
depend on a hidden sample, and the density / temperature estimates (unused by the semantic path
loss) are not computed.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

__all__ = ["HierarchicalClusters", "check_cluster_counts", "hierarchical_kmeans"]


@dataclass
class HierarchicalClusters:
    """The result of :func:`hierarchical_kmeans` for L levels over N images in D dimensions.

    Attributes:
        centroids: L float32 tensors, ``centroids[l]`` of shape (K_l, D), rows L2-normalised.
        im2cluster: L int64 tensors of shape (N,): the level-l cluster of every image (for l > 0
            composed through the hierarchy: ``im2cluster[l] = cluster2cluster[l-1][im2cluster[l-1]]``).
        cluster2cluster: L-1 int64 tensors, ``cluster2cluster[l]`` of shape (K_l,): the
            level-(l+1) parent of every level-l centroid.
        epoch: the training epoch whose features were clustered (-1 when unknown).

    Shapes are checked on construction (cheap, no device sync); :meth:`check_consistent` also
    checks the index ranges and the composition.
    """

    centroids: list[Tensor]
    im2cluster: list[Tensor]
    cluster2cluster: list[Tensor]
    epoch: int = -1
    _KEYS: ClassVar[tuple[str, ...]] = ("centroids", "im2cluster", "cluster2cluster")

    def __post_init__(self) -> None:
        self.centroids = list(self.centroids)
        self.im2cluster = list(self.im2cluster)
        self.cluster2cluster = list(self.cluster2cluster)
        self.epoch = int(self.epoch)
        n_levels = len(self.centroids)
        if n_levels < 1:
            raise ValueError("HierarchicalClusters needs at least one level of centroids.")
        if len(self.im2cluster) != n_levels or len(self.cluster2cluster) != n_levels - 1:
            raise ValueError(
                f"HierarchicalClusters: expected {n_levels} im2cluster and {n_levels - 1} cluster2cluster tensors "
                f"for {n_levels} levels of centroids, got {len(self.im2cluster)} and {len(self.cluster2cluster)}."
            )
        dim = self.centroids[0].shape[-1] if self.centroids[0].ndim == 2 else None
        n = self.im2cluster[0].shape[0] if self.im2cluster[0].ndim == 1 else None
        for lvl, c in enumerate(self.centroids):
            if c.ndim != 2 or c.shape[1] != dim or not c.is_floating_point():
                raise ValueError(
                    f"HierarchicalClusters: centroids[{lvl}] must be a float (K, D={dim}) tensor, "
                    f"got {c.dtype} of shape {tuple(c.shape)}."
                )
        for lvl, a in enumerate(self.im2cluster):
            if a.ndim != 1 or a.shape[0] != n or a.dtype != torch.long:
                raise ValueError(
                    f"HierarchicalClusters: im2cluster[{lvl}] must be an int64 (N={n},) tensor, "
                    f"got {a.dtype} of shape {tuple(a.shape)}."
                )
        for lvl, a in enumerate(self.cluster2cluster):
            k = self.centroids[lvl].shape[0]
            if a.ndim != 1 or a.shape[0] != k or a.dtype != torch.long:
                raise ValueError(
                    f"HierarchicalClusters: cluster2cluster[{lvl}] must be an int64 (K_{lvl}={k},) tensor, "
                    f"got {a.dtype} of shape {tuple(a.shape)}."
                )

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        """L."""
        return len(self.centroids)

    @property
    def num_cluster(self) -> list[int]:
        """[K_1, ..., K_L]."""
        return [int(c.shape[0]) for c in self.centroids]

    @property
    def num_samples(self) -> int:
        """N."""
        return int(self.im2cluster[0].shape[0])

    # -- use -----------------------------------------------------------------------------------
    def paths(self, index: Tensor) -> Tensor:
        """The semantic paths of images ``index`` (B,): (B, L) int64, column l = level-l cluster."""
        return torch.stack([a[index.to(a.device)] for a in self.im2cluster], dim=-1)

    def to(self, device: torch.device | str) -> HierarchicalClusters:
        """A copy with every tensor on ``device`` (tensors already there are shared, not copied)."""
        return HierarchicalClusters(
            centroids=[c.to(device) for c in self.centroids],
            im2cluster=[a.to(device) for a in self.im2cluster],
            cluster2cluster=[a.to(device) for a in self.cluster2cluster],
            epoch=self.epoch,
        )

    def check_consistent(self) -> None:
        """Raise ValueError unless every index is in range and im2cluster composes through cluster2cluster."""
        for lvl, a in enumerate(self.im2cluster):
            k = self.centroids[lvl].shape[0]
            if a.numel() and (int(a.min()) < 0 or int(a.max()) >= k):
                raise ValueError(f"HierarchicalClusters: im2cluster[{lvl}] has indices outside [0, {k}).")
        for lvl, a in enumerate(self.cluster2cluster):
            k = self.centroids[lvl + 1].shape[0]
            if a.numel() and (int(a.min()) < 0 or int(a.max()) >= k):
                raise ValueError(f"HierarchicalClusters: cluster2cluster[{lvl}] has indices outside [0, {k}).")
            if not torch.equal(a[self.im2cluster[lvl]], self.im2cluster[lvl + 1]):
                raise ValueError(
                    f"HierarchicalClusters: im2cluster[{lvl + 1}] != cluster2cluster[{lvl}][im2cluster[{lvl}]]."
                )

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """Tensors only: ``centroids.{l}``, ``im2cluster.{l}``, ``cluster2cluster.{l}`` and a 0-dim int64 ``epoch``."""
        out: dict[str, Tensor] = {}
        for key in self._KEYS:
            for lvl, t in enumerate(getattr(self, key)):
                out[f"{key}.{lvl}"] = t
        out["epoch"] = torch.tensor(self.epoch, dtype=torch.long)
        return out

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor]) -> HierarchicalClusters:
        """Inverse of :meth:`state_dict`; raises ValueError on missing or unexpected keys."""
        n_levels = sum(1 for k in state if k.startswith("centroids."))
        expected = {f"centroids.{lvl}" for lvl in range(n_levels)}
        expected |= {f"im2cluster.{lvl}" for lvl in range(n_levels)}
        expected |= {f"cluster2cluster.{lvl}" for lvl in range(n_levels - 1)}
        expected.add("epoch")
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if n_levels == 0 or missing or unexpected:
            raise ValueError(
                f"not a HierarchicalClusters state dict: missing keys {missing or '[]'}, "
                f"unexpected keys {unexpected or '[]'} ({n_levels} levels of centroids)."
            )
        return cls(
            centroids=[state[f"centroids.{lvl}"] for lvl in range(n_levels)],
            im2cluster=[state[f"im2cluster.{lvl}"] for lvl in range(n_levels)],
            cluster2cluster=[state[f"cluster2cluster.{lvl}"] for lvl in range(n_levels - 1)],
            epoch=int(state["epoch"]),
        )


def check_cluster_counts(num_cluster: Sequence[int], n_points: int | None = None) -> list[int]:
    """One-line ValueErrors for bad cluster counts (empty, not ints, < 1, increasing up the
    hierarchy, and with ``n_points`` more level-0 clusters than points); returns them as ints."""
    if isinstance(num_cluster, (str, bytes)) or not isinstance(num_cluster, Sequence):
        raise ValueError(f"num_cluster must be a sequence of ints (one per level), got {num_cluster!r}.")
    if len(num_cluster) == 0:
        raise ValueError("num_cluster is empty: give at least one level, e.g. [3000, 1000, 300].")
    counts: list[int] = []
    for lvl, k in enumerate(num_cluster):
        try:
            if isinstance(k, bool):
                raise TypeError
            counts.append(operator.index(k))
        except TypeError:
            raise ValueError(f"num_cluster[{lvl}] must be an int, got {k!r}.") from None
        if counts[-1] < 1:
            raise ValueError(f"num_cluster[{lvl}] must be >= 1, got {counts[-1]}.")
    if n_points is not None and counts[0] > n_points:
        raise ValueError(f"num_cluster[0]={counts[0]} is more clusters than the {n_points} points to cluster.")
    for lvl in range(1, len(counts)):
        if counts[lvl] > counts[lvl - 1]:
            raise ValueError(
                f"num_cluster[{lvl}]={counts[lvl]} is more clusters than the {counts[lvl - 1]} centroids of "
                f"level {lvl - 1} below it; counts must not increase up the hierarchy."
            )
    return counts


def _faiss_uses_gpu(faiss_module: object, use_gpu: bool | None) -> bool:
    n_gpus = getattr(faiss_module, "get_num_gpus", lambda: 0)()
    if use_gpu is None:
        return n_gpus > 0
    if use_gpu and n_gpus == 0:
        raise ValueError("use_gpu=True but faiss sees no GPU (faiss-cpu build or no device).")
    return bool(use_gpu)


def _kmeans_level(
    faiss_module: object, x: np.ndarray, k: int, seed: int, niter: int, nredo: int, gpu: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One faiss k-means: (k, D) float32 centroids (not normalised) and (n,) int64 nearest-centroid ids."""
    n, d = x.shape
    km = faiss_module.Kmeans(  # type: ignore[attr-defined]
        d,
        k,
        niter=niter,
        nredo=nredo,
        seed=seed,
        spherical=False,
        verbose=False,
        gpu=1 if gpu else False,
        min_points_per_centroid=1,  # no "too few points" warning; n >= k is checked up front
        max_points_per_centroid=math.ceil(n / k) + 1,  # no subsampling: every point is used
    )
    km.train(x)
    _, assign = km.index.search(x, 1)
    return np.asarray(km.centroids, dtype=np.float32).reshape(k, d), assign[:, 0].astype(np.int64)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows divided by max(||row||, 1e-12), like ``F.normalize``; float32, C-contiguous."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norm, 1e-12), dtype=np.float32)


def hierarchical_kmeans(
    features: np.ndarray | Tensor,
    num_cluster: Sequence[int],
    seed: int,
    niter: int = 20,
    *,
    nredo: int = 5,
    epoch: int = -1,
    use_gpu: bool | None = None,
) -> HierarchicalClusters:
    """Cluster (N, D) features into an L-level hierarchy of ``num_cluster = [K_0, ..., K_{L-1}]`` centroids.

    Levels are 0-based. Level 0 runs k-means on the L2-normalised features; level ``l+1`` runs k-means on the
    L2-normalised level-``l`` centroids (K_l points). Each level is faiss Euclidean k-means with
    ``niter`` iterations, ``nredo`` restarts (the best objective is kept) and seed ``seed + l``;
    assignments are nearest centroid (L2). Centroids are L2-normalised before being stored and
    before the next level clusters them.

    Args:
        features: (N, D) image features (any float dtype; a tensor is detached and moved to CPU).
        num_cluster: K_0 >= K_1 >= ... >= K_{L-1} >= 1, with K_0 <= N.
        seed: base seed; deterministic on CPU for a given seed.
        niter: k-means iterations per level (20 in HIRL).
        nredo: restarts per level (5 in HIRL).
        epoch: recorded in the result (the epoch whose features these are).
        use_gpu: None = faiss GPU when ``faiss.get_num_gpus() > 0`` (one GPU), else CPU;
            True/False to force (True raises if faiss has no GPU).

    Returns:
        :class:`HierarchicalClusters` with CPU tensors: centroids[l] (K_l, D) float32 unit rows,
        im2cluster[l] (N,) int64, cluster2cluster[l] (K_l,) int64 for l < L-1.

    Raises:
        ValueError: (before any clustering) features not 2-D / empty / non-finite, empty
            ``num_cluster``, a count < 1, K_0 > N, K_{l+1} > K_l, niter or nredo < 1.
    """
    shape = tuple(features.shape)
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"features must be a non-empty 2-D (N, D) array, got shape {shape}.")
    counts = check_cluster_counts(num_cluster, shape[0])
    if niter < 1 or nredo < 1:
        raise ValueError(f"niter and nredo must be >= 1, got niter={niter}, nredo={nredo}.")
    if isinstance(features, Tensor):
        x = features.detach().to(device="cpu", dtype=torch.float32).numpy()
    else:
        x = np.asarray(features, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf; refusing to cluster them.")

    import faiss  # imported lazily: only clustering needs it

    gpu = _faiss_uses_gpu(faiss, use_gpu)
    points = _l2_normalise(x)
    centroids: list[Tensor] = []
    im2cluster: list[Tensor] = []
    cluster2cluster: list[Tensor] = []
    for lvl, k in enumerate(counts):
        mu, assign = _kmeans_level(faiss, points, k, seed + lvl, niter, nredo, gpu)
        assign_t = torch.from_numpy(assign)
        if lvl == 0:
            im2cluster.append(assign_t)
        else:
            cluster2cluster.append(assign_t)
            im2cluster.append(assign_t[im2cluster[-1]])
        points = _l2_normalise(mu)  # the stored centroids, and the next level's input
        centroids.append(torch.from_numpy(points.copy()))
    return HierarchicalClusters(centroids, im2cluster, cluster2cluster, epoch=epoch)
