"""MoCo v2 InfoNCE with a queue of negatives (Chen et al. 2020) and MoCo v3's in-batch loss (Chen et al. 2021).

MoCo v2 (facebookresearch/moco, ``moco/builder.py``): with q, k (B, D) L2-normalised queries and
momentum keys and the queue ``Q`` (K, D) of past keys,
``logits = [q_b . k_b, q_b . Q_1, ..., q_b . Q_K] / T`` (B, 1 + K) and ``loss = CE(logits, 0)``;
the keys are then enqueued (gathered over ranks), overwriting the oldest. The repository's README
sets ``--moco-t 0.2`` for v2 (v1: 0.07), K = 65536 and D = 128.

MoCo v3 (facebookresearch/moco-v3, ``moco/builder.py``, ``MoCo.contrastive_loss`` and ``forward``):
``ctr(q, k) = CE(norm(q) @ norm(k_all)^T / T, arange(B) + rank*B) * (2*T)`` with ``k_all`` the keys
of every rank gathered without gradient, and ``loss = ctr(q1, k2) + ctr(q2, k1)`` (a sum, not a
mean). ``--moco-t`` defaults to 1.0 (the ResNet-50 recipe); the ViT recipes in CONFIG.md use 0.2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.distributed import all_gather_no_grad, get_rank
from hirl_like.registry import LOSSES


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")


def _check_pair(q: Tensor, k: Tensor, what: str) -> None:
    if q.dim() != 2 or q.shape != k.shape:
        raise ValueError(f"{what}: queries {tuple(q.shape)} and keys {tuple(k.shape)} must both be (B, D).")


class MomentumQueue(nn.Module):
    """Ring buffer of the K most recent keys, L2-normalised: buffer ``queue`` (K, D), pointer ``ptr`` (1,).

    Starts as random unit vectors (as MoCo). :meth:`enqueue` gathers the keys of every rank
    (rank-major, no gradient), normalises them and writes them at rows ``ptr, ptr+1, ... (mod K)``,
    replacing the oldest keys (dequeue), then advances ``ptr`` by the number written. Every rank
    therefore holds the same queue (safe with DDP's buffer broadcast and rank-0 checkpoints).
    Unlike MoCo's ``assert K % batch_size == 0`` the write wraps around the end.

    Args:
        dim: D, key size (128 in MoCo v2).
        size: K, number of keys kept (65536).
    """

    queue: Tensor
    ptr: Tensor

    def __init__(self, dim: int = 128, size: int = 65536) -> None:
        super().__init__()
        _check_positive("dim", dim)
        _check_positive("size", size)
        self.dim, self.size = int(dim), int(size)
        self.register_buffer("queue", F.normalize(torch.randn(self.size, self.dim), dim=1))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """keys: (B, D) on this rank; (world*B, D) rows are written. Needs world*B <= K."""
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must be (B, {self.dim}), got {tuple(keys.shape)}.")
        rows = F.normalize(all_gather_no_grad(keys).float(), dim=1)
        n = rows.shape[0]
        if n > self.size:
            raise ValueError(f"cannot enqueue {n} keys (all ranks) into a queue of size {self.size}.")
        idx = (int(self.ptr) + torch.arange(n, device=self.queue.device)) % self.size
        self.queue[idx] = rows.to(self.queue.dtype)
        self.ptr[0] = (int(self.ptr) + n) % self.size


def moco_infonce(q: Tensor, k: Tensor, negatives: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """MoCo's InfoNCE on normalised inputs: q, k (B, D), negatives (K, D) -> (loss, logits (B, 1+K)).

    ``loss = mean_b [ logsumexp_j logits[b, j] - logits[b, 0] ]`` with
    ``logits[b] = [q_b . k_b, q_b . n_1, ..., q_b . n_K] / T``; no gradient reaches k or negatives.
    """
    k, negatives = k.detach(), negatives.detach()
    pos = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
    logits = torch.cat([pos, q @ negatives.T], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels), logits


@LOSSES.register()
class MoCoV2Loss(nn.Module):
    """MoCo v2 InfoNCE against a :class:`MomentumQueue`; ``forward`` enqueues the keys afterwards.

    ``forward(q, k)``: q (B, D) queries (gradient), k (B, D) momentum-encoder keys (detached); both
    are L2-normalised here. Returns ``{"loss", "acc"}``; ``acc`` = percent of rows whose positive
    logit (index 0) is the largest, detached. Float32, autocast disabled. The loss is the mean over
    the local B rows (all ranks share the queue; each rank's positives are its own keys).

    Args:
        temperature: T (0.2 for MoCo v2).
        dim: D, projection size (128).
        queue_size: K, negatives kept (65536).
    """

    def __init__(self, temperature: float = 0.2, dim: int = 128, queue_size: int = 65536) -> None:
        super().__init__()
        _check_positive("temperature", temperature)
        _check_positive("dim", dim)
        _check_positive("queue_size", queue_size)
        self.temperature = temperature
        self.queue = MomentumQueue(dim, queue_size)

    def forward(self, q: Tensor, k: Tensor) -> dict[str, Tensor]:
        _check_pair(q, k, "MoCoV2Loss")
        with torch.autocast(device_type=q.device.type, enabled=False):
            qn = F.normalize(q.float(), dim=1)
            kn = F.normalize(k.detach().float(), dim=1)
            # a copy: autograd keeps the negatives for backward, and enqueue() below writes in place
            negatives = self.queue.queue.detach().float().clone()
            loss, logits = moco_infonce(qn, kn, negatives, self.temperature)
        with torch.no_grad():
            acc = (logits.argmax(dim=1) == 0).float().mean() * 100.0
        self.queue.enqueue(kn)
        return {"loss": loss, "acc": acc}


@LOSSES.register()
class MoCoV3Loss(nn.Module):
    """MoCo v3's symmetric in-batch contrastive loss, scaled by 2T as in its code.

    ``forward(q1, q2, k1, k2)``: predictor outputs q (B, D) of the two views (gradient) and momentum
    keys k (B, D) (no gradient; gathered over ranks). With ``ctr`` as in the module docstring,
    ``loss = ctr(q1, k2) + ctr(q2, k1)``. Returns ``{"loss", "acc"}``, ``acc`` = top-1 percent of the
    first term's logits, detached. Float32, autocast disabled. Each rank's loss averages its local
    B rows (labels offset by rank*B), so all ranks must pass the same B.

    Args:
        temperature: T (1.0 ResNet recipe, 0.2 ViT recipe).
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        _check_positive("temperature", temperature)
        self.temperature = temperature

    def _ctr(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        qn = F.normalize(q.float(), dim=1)
        k_all = F.normalize(all_gather_no_grad(k).float(), dim=1)  # (world*B, D), detached
        logits = qn @ k_all.T / self.temperature
        labels = torch.arange(q.shape[0], device=q.device) + get_rank() * q.shape[0]
        return F.cross_entropy(logits, labels) * (2 * self.temperature), logits, labels

    def forward(self, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor) -> dict[str, Tensor]:
        _check_pair(q1, k2, "MoCoV3Loss")
        _check_pair(q2, k1, "MoCoV3Loss")
        with torch.autocast(device_type=q1.device.type, enabled=False):
            loss_12, logits, labels = self._ctr(q1, k2)
            loss_21, _, _ = self._ctr(q2, k1)
            loss = loss_12 + loss_21
        with torch.no_grad():
            acc = (logits.argmax(dim=1) == labels).float().mean() * 100.0
        return {"loss": loss, "acc": acc}
