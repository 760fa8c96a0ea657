"""HIRL's semantic path discrimination (SPD) loss (Xu et al. 2022, "HIRL: A General Framework for
Hierarchical Image Representation Learning").

A hierarchical k-means (:func:`hirl_like.hirl.hierarchical_kmeans`) gives every image a *semantic
path* ``(c_0, ..., c_{L-1})`` of prototypes, finest first, with ``c_{l+1} = cluster2cluster[l][c_l]``.
The caller projects the image embedding once per level (``z_l``, its own MLP head per level); the
path score is the product of the per-level cosine similarities mapped to [0, 1]::

    s(z, (c_0, ..., c_{L-1})) = prod_l (cos(z_l, mu^l_{c_l}) + 1) / 2          in [0, 1]

and each sample is a binary classification of its positive path (its own clusters) against
``P = num_neg_path`` sampled negative paths::

    pos_b = -log(s(z_b, path_b) + eps)
    neg_b = sum_n t_bn * -log(1 - s(z_b, neg_bn) + eps) / (sum_n t_bn + eps)
    loss  = mean_b (pos_b + neg_b) / 2

A negative path is drawn by picking a level-0 prototype uniformly at random and following
``cluster2cluster`` upwards; ``t_bn = 1`` when it differs from sample b's positive path at some
level (a *true* negative), else 0 and it is ignored. Averaging, eps and sampling follow the public
HIRL code (hirl-team/HIRL, ``hirl/pipelines/hirl.py``: ``HIRL.sample_neg_path`` and
``HIRL.semantic_path_discrimination_loss``, ``eps = 1e-6``): the negative term is a per-sample mean
over that sample's true negatives (with ``eps`` in the denominator), a sample without true negatives
has ``neg_b = 0`` but still counts in the batch mean, and the positive and negative terms are
averaged together (``stack([pos, neg]).mean()``), hence the ``/ 2``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.losses.distill_ce import check_positive
from hirl_like.registry import LOSSES

if TYPE_CHECKING:
    from hirl_like.hirl.hierarchical_kmeans import HierarchicalClusters

__all__ = [
    "SPD_EPS",
    "SemanticPathLoss",
    "path_scores",
    "sample_negative_paths",
    "semantic_path_discrimination",
]

SPD_EPS = 1e-6  # HIRL.eps in hirl-team/HIRL hirl/pipelines/hirl.py


def sample_negative_paths(
    cluster2cluster: Sequence[Tensor],
    num_level0: int,
    batch_size: int,
    num_neg_path: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw ``num_neg_path`` random semantic paths per sample.

    The level-0 ids are exactly ``torch.randint(num_level0, (batch_size, num_neg_path),
    generator=generator)`` (drawn on the generator's device, or on ``device`` from the global RNG
    when no generator is given); the higher levels follow ``cluster2cluster``. Uniform sampling
    with replacement, as HIRL's ``torch.multinomial(ones(K_0), B * P, replacement=True)``.

    Args:
        cluster2cluster: L-1 int64 tensors, ``cluster2cluster[l]`` (K_l,) -> level-(l+1) id.
        num_level0: K_0, the number of level-0 prototypes.

    Returns:
        (batch_size, num_neg_path, L) int64 on ``device`` (default: cluster2cluster's device, or CPU).
    """
    if device is None:
        device = cluster2cluster[0].device if len(cluster2cluster) else "cpu"
    draw_device = generator.device if generator is not None else device
    ids = torch.randint(num_level0, (batch_size, num_neg_path), generator=generator, device=draw_device).to(device)
    levels = [ids]
    for c2c in cluster2cluster:
        levels.append(c2c.to(device)[levels[-1]])
    return torch.stack(levels, dim=-1)


def path_scores(z: Tensor, centroids: Sequence[Tensor], paths: Tensor) -> Tensor:
    """``s[b, n] = prod_l (<z[b, l], centroids[l][paths[b, n, l]]> + 1) / 2``.

    Args:
        z: (B, L, D) unit-norm per-level embeddings.
        centroids: L unit-norm (K_l, D) prototype tensors.
        paths: (B, P, L) int64 prototype ids.

    Returns:
        (B, P) path scores. Computed through the (B, K_l) similarity tables, so memory is
        O(B * (P * L + sum_l K_l)) instead of HIRL's O(B * P * L * D) gather; same values.
    """
    score = torch.ones(paths.shape[:2], dtype=z.dtype, device=z.device)
    for lvl, c in enumerate(centroids):
        sims = z[:, lvl] @ c.t()  # (B, K_l)
        score = score * (sims.gather(1, paths[:, :, lvl]) + 1.0) / 2.0
    return score


def semantic_path_discrimination(
    z: Tensor,
    centroids: Sequence[Tensor],
    pos_path: Tensor,
    neg_path: Tensor,
    eps: float = SPD_EPS,
) -> dict[str, Tensor]:
    """The SPD loss for given positive and negative paths (see the module docstring for the equation).

    Args:
        z: (B, L, D) per-level embeddings; L2-normalised here (float32).
        centroids: L (K_l, D) prototypes; L2-normalised here.
        pos_path: (B, L) int64, each sample's own path (``im2cluster[l][index]``).
        neg_path: (B, P, L) int64 sampled paths; those equal to ``pos_path`` are ignored.
        eps: inside both logs and in the per-sample denominator (1e-6 in HIRL).

    Returns:
        ``loss`` (scalar, with gradient), and detached scalars ``pos_loss = mean_b pos_b``,
        ``neg_loss = mean_b neg_b`` (so ``loss = (pos_loss + neg_loss) / 2``), ``spd_accuracy``
        (fraction in [0, 1] of samples whose positive path scores strictly above every one of its
        sampled true negatives; a sample with no true negative counts as correct) and
        ``true_negative_frac`` (fraction of sampled paths that are true negatives).
    """
    zn = F.normalize(z.float(), dim=-1)
    cn = [F.normalize(c.float(), dim=-1) for c in centroids]
    p_pos = path_scores(zn, cn, pos_path.unsqueeze(1)).squeeze(1)  # (B,)
    p_neg = path_scores(zn, cn, neg_path)  # (B, P)
    true_neg = (neg_path != pos_path.unsqueeze(1)).any(dim=-1)  # (B, P)
    t = true_neg.to(p_neg.dtype)
    pos_term = -torch.log(p_pos + eps)
    neg_term = (-torch.log(1.0 - p_neg + eps) * t).sum(dim=-1) / (t.sum(dim=-1) + eps)
    loss = torch.stack([pos_term, neg_term], dim=-1).mean()
    with torch.no_grad():
        beaten = (p_neg >= p_pos.unsqueeze(1)) & true_neg
        acc = (~beaten.any(dim=-1)).float().mean()
    return {
        "loss": loss,
        "pos_loss": pos_term.detach().mean(),
        "neg_loss": neg_term.detach().mean(),
        "spd_accuracy": acc,
        "true_negative_frac": t.mean(),
    }


def _cluster_parts(clusters: HierarchicalClusters | Mapping[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """(centroids, im2cluster, cluster2cluster) from a HierarchicalClusters or HIRL's cluster_result dict."""
    if isinstance(clusters, Mapping):
        try:
            return list(clusters["centroids"]), list(clusters["im2cluster"]), list(clusters["cluster2cluster"])
        except KeyError as err:
            raise ValueError(f"clusters mapping lacks key {err}; needs centroids, im2cluster, cluster2cluster.") from None
    return list(clusters.centroids), list(clusters.im2cluster), list(clusters.cluster2cluster)


@LOSSES.register("semantic_path", aliases=("SemanticPathLoss",))
class SemanticPathLoss(nn.Module):
    """HIRL semantic path discrimination against a hierarchical clustering of the training set.

    ``loss = mean_b (pos_b + neg_b) / 2`` with ``pos_b = -log(s_b^+ + eps)`` and ``neg_b`` the mean
    over sample b's true negatives of ``-log(1 - s_bn + eps)`` (0 when it has none), where
    ``s = prod_l (cos(z_l, mu^l_{c_l}) + 1) / 2`` is a path's score. Averaging and eps = 1e-6
    follow hirl-team/HIRL ``hirl/pipelines/hirl.py``; see :mod:`hirl_like.losses.semantic_path`.

    ``forward(z, index, clusters, generator=None)``:
        z: (B, L, D) tensor or a sequence of L (B, D) tensors, the per-level projections of the
            batch (normalised here; float32 inside).
        index: (B,) int64 dataset indices of the batch (positive path = ``im2cluster[l][index]``).
        clusters: a :class:`~hirl_like.hirl.HierarchicalClusters` (or a mapping with keys
            ``centroids``, ``im2cluster``, ``cluster2cluster``), moved to z's device if needed.
        generator: optional ``torch.Generator`` for the negative draw (global RNG otherwise);
            the draw is ``torch.randint(K_0, (B, num_neg_path), generator=generator)``.

    Returns ``{"loss", "pos_loss", "neg_loss", "spd_accuracy", "true_negative_frac"}`` (scalars;
    all but ``loss`` detached; ``spd_accuracy`` is a fraction in [0, 1]).

    Args:
        num_neg_path: P, negative paths sampled per sample (1000 in HIRL).
        eps: 1e-6 as in HIRL.
    """

    def __init__(self, num_neg_path: int = 1000, eps: float = SPD_EPS) -> None:
        super().__init__()
        if isinstance(num_neg_path, bool) or not isinstance(num_neg_path, int):
            raise ValueError(f"num_neg_path must be an int, got {num_neg_path!r}.")
        check_positive("num_neg_path", num_neg_path)
        check_positive("eps", eps)
        self.num_neg_path = num_neg_path
        self.eps = eps

    def forward(
        self,
        z: Tensor | Sequence[Tensor],
        index: Tensor,
        clusters: HierarchicalClusters | Mapping[str, Any],
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        centroids, im2cluster, cluster2cluster = _cluster_parts(clusters)
        z = z if isinstance(z, Tensor) else torch.stack(list(z), dim=1)
        n_levels = len(centroids)
        if z.ndim != 3 or z.shape[1] != n_levels:
            raise ValueError(
                f"SemanticPathLoss: z must be (B, L={n_levels}, D) or {n_levels} (B, D) tensors, got shape "
                f"{tuple(z.shape)}."
            )
        if len(im2cluster) != n_levels or len(cluster2cluster) != n_levels - 1:
            raise ValueError(
                f"SemanticPathLoss: {n_levels} levels of centroids need {n_levels} im2cluster and "
                f"{n_levels - 1} cluster2cluster tensors, got {len(im2cluster)} and {len(cluster2cluster)}."
            )
        if any(c.ndim != 2 or c.shape[1] != z.shape[2] for c in centroids):
            raise ValueError(
                f"SemanticPathLoss: centroid dims {[tuple(c.shape) for c in centroids]} do not match "
                f"the embedding dim D={z.shape[2]}."
            )
        if index.ndim != 1 or index.shape[0] != z.shape[0] or index.is_floating_point():
            raise ValueError(
                f"SemanticPathLoss: index must be an integer (B={z.shape[0]},) tensor, got {index.dtype} "
                f"of shape {tuple(index.shape)}."
            )
        device = z.device
        centroids = [c.to(device) for c in centroids]
        cluster2cluster = [a.to(device) for a in cluster2cluster]
        index = index.to(device=device, dtype=torch.long)
        pos_path = torch.stack([a.to(device)[index] for a in im2cluster], dim=-1)  # (B, L)
        with torch.no_grad():
            neg_path = sample_negative_paths(
                cluster2cluster, centroids[0].shape[0], z.shape[0], self.num_neg_path, generator, device
            )
        with torch.autocast(device_type=device.type, enabled=False):
            return semantic_path_discrimination(z, centroids, pos_path, neg_path, self.eps)
