"""The episode of ProtoCLIP (Chen et al. 2022): recent projected embeddings, and the prototypes
k-means finds in them.

ProtoCLIP trains in episodes: before each, its reference (megvii-research/protoclip,
``training/main.py``) re-encodes a random subset of the data (``--episode-size 200000``) with the
current model and clusters its image and its text embeddings separately with faiss k-means
(``--k 20000 --kmeans-max-iter 20 --kmeans-nredo 3``). Here the episode is the last
``episode_size`` (image, text) embedding pairs *the training steps themselves* produced (no extra
pass over the data; they come from the last ``episode_size / global batch`` steps' models):
:class:`EpisodeMemory` keeps them, and every time it has taken ``episode_size`` new pairs,
:func:`episode_prototypes` clusters them (docs/deviations.md).

Prototype Back Translation (PBT, the paper's Sec. 3.3, on in its recipe): the student prototypes
of the image side are the image-space means of the text clusters (and vice versa), so that the
image student is scored against prototypes that live in its own space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.distributed import all_gather_no_grad, get_rank, is_distributed


class EpisodeMemory(nn.Module):
    """Ring buffers ``image`` and ``text`` (N, D) of the N = ``size`` most recent embedding pairs.

    Buffers (all in the checkpoint): ``image``, ``text``; ``ptr`` (next row to write), ``filled``
    (rows holding data, <= N) and ``fresh`` (pairs written since the last clustering), 0-dim int64.
    Every rank writes the pairs of every rank (gathered, rank-major), so all ranks hold the same rows.
    """

    image: Tensor
    text: Tensor
    ptr: Tensor
    filled: Tensor
    fresh: Tensor

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if dim <= 0 or size <= 0:
            raise ValueError(f"EpisodeMemory: dim and size must be positive, got {dim}, {size}.")
        self.dim, self.size = int(dim), int(size)
        self.register_buffer("image", torch.zeros(self.size, self.dim))
        self.register_buffer("text", torch.zeros(self.size, self.dim))
        for name in ("ptr", "filled", "fresh"):
            self.register_buffer(name, torch.zeros((), dtype=torch.long))

    @property
    def ready(self) -> bool:
        """True once ``size`` new pairs arrived since the last clustering (the memory is then full)."""
        return int(self.fresh) >= self.size

    @torch.no_grad()
    def add(self, image: Tensor, text: Tensor) -> None:
        """image, text: (B, D) on this rank; the world*B rows of all ranks are written (wrapping)."""
        rows_i, rows_t = all_gather_no_grad(image.float()), all_gather_no_grad(text.float())
        n = rows_i.shape[0]
        if n > self.size:
            raise ValueError(f"an episode of {self.size} pairs cannot take a step of {n} pairs (all ranks).")
        idx = (int(self.ptr) + torch.arange(n, device=self.image.device)) % self.size
        self.image[idx] = rows_i.to(self.image.dtype)
        self.text[idx] = rows_t.to(self.text.dtype)
        self.ptr.fill_((int(self.ptr) + n) % self.size)
        self.filled.fill_(min(int(self.filled) + n, self.size))
        self.fresh.add_(n)


@dataclass
class EpisodePrototypes:
    """Unit-row (K, D) tensors: the k-means centroids of each side and the student prototypes
    (the back-translated ones with PBT, else the other side's centroids)."""

    image_centroids: Tensor
    text_centroids: Tensor
    image_students: Tensor  # what image embeddings are scored against
    text_students: Tensor


def back_translate(features: Tensor, labels: Tensor, k: int) -> Tensor:
    """(N, D) features of one side, (N,) cluster ids from the other side -> (K, D): the
    L2-normalised mean feature of each cluster (a zero row for an empty cluster, as the reference)."""
    sums = torch.zeros(k, features.shape[1], dtype=torch.float32, device=features.device)
    sums.index_add_(0, labels.to(features.device), features.float())
    return F.normalize(sums, dim=1)


@torch.no_grad()
def episode_prototypes(
    memory: EpisodeMemory, k: int, seed: int, iterations: int, restarts: int, pbt: bool
) -> EpisodePrototypes:
    """Cluster the memory's image and text rows into ``k`` prototypes each (faiss k-means through
    :func:`~hirl_like.hirl.hierarchical_kmeans.hierarchical_kmeans` with one level: L2-normalised
    inputs, ``restarts`` restarts, centroids stored L2-normalised). Rank 0 clusters and broadcasts."""
    from hirl_like.hirl.hierarchical_kmeans import hierarchical_kmeans  # faiss only when clustering

    device = memory.image.device
    out = torch.zeros(4, k, memory.dim, device=device)
    if get_rank() == 0:
        image = hierarchical_kmeans(memory.image, [k], seed, iterations, nredo=restarts)
        text = hierarchical_kmeans(memory.text, [k], seed + 1, iterations, nredo=restarts)
        out[0], out[1] = image.centroids[0].to(device), text.centroids[0].to(device)
        if pbt:
            out[2] = back_translate(F.normalize(memory.image.float(), dim=1), text.im2cluster[0], k)
            out[3] = back_translate(F.normalize(memory.text.float(), dim=1), image.im2cluster[0], k)
        else:
            out[2], out[3] = out[1], out[0]
    if is_distributed():
        torch.distributed.broadcast(out, src=0)
    return EpisodePrototypes(out[0], out[1], out[2], out[3])
