"""SwAV's swapped-prediction loss with Sinkhorn-Knopp codes (Caron et al. 2020).

Facts from facebookresearch/swav ``main_swav.py`` (``train`` and ``distributed_sinkhorn``):
epsilon 0.05, 3 Sinkhorn iterations, temperature 0.1, codes computed for ``crops_for_assign``
(default the first two crops) and predicted from every other crop, an optional queue of past
embeddings that only enlarges the set the codes are computed on.

Sinkhorn-Knopp on the scores S (N, K) (N samples, all ranks; K prototypes), ``Q = exp(S / eps)^T``
(K, N), then ``Q /= sum(Q)`` and ``iterations`` times: each row (prototype) rescaled to sum 1/K,
then each column (sample) to sum 1/N; finally ``Q *= N`` so that each sample's column sums to 1.
The returned (N, K) codes therefore have rows summing exactly to 1 and, at convergence, columns
summing to N/K (equipartition; after 3 iterations only approximately).

Loss, with ``p_v = softmax(S_v / T)`` the predictions of crop v and ``q_c`` the codes of crop c:
``loss = mean_{c in assign} [ sum_{v != c} -mean_b sum_k q_c[b, k] log p_v[b, k] / (V - 1) ]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.distributed import all_gather_no_grad, all_reduce_sum, get_rank, get_world_size, is_distributed
from hirl_like.registry import LOSSES


def _global_max(x: Tensor) -> Tensor:
    m = x.max()
    if is_distributed() and get_world_size() > 1:
        m = m.clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return m


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """(N_local, K) scores -> (N_local, K) codes; sums run over every rank (N = world * N_local).

    See the module docstring for the steps. ``exp`` is taken of ``(S - max S) / eps``: the constant
    factor cancels in the first normalisation, and large scores cannot overflow. Float32, no grad.
    Every rank must pass the same N_local.
    """
    s = scores.detach().float()
    q = torch.exp((s - _global_max(s)) / epsilon).T  # (K, N_local)
    k, n = q.shape[0], q.shape[1] * get_world_size()
    q /= all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))  # each prototype's total -> 1 ...
        q /= k  # ... -> 1/K
        q /= q.sum(dim=0, keepdim=True)  # each sample's total -> 1 ...
        q /= n  # ... -> 1/N
    q *= n  # each sample's column sums to 1: an assignment
    return q.T


@torch.no_grad()
def normalize_prototypes_(weight: Tensor) -> Tensor:
    """In place: L2-normalise the rows of the (K, D) prototype matrix (SwAV does it before each step)."""
    return weight.copy_(F.normalize(weight, dim=1))


@LOSSES.register()
class SwAVLoss(nn.Module):
    """Swapped prediction over multi-crop, with an optional queue for the codes.

    ``forward(scores, embeddings=None, prototypes=None, use_queue=True)``:
    - scores: (V*B, K) prototype scores ``embeddings @ prototypes^T`` of the V crops, crop-major
      (rows v*B .. v*B + B - 1 are crop v). Gradient flows only through the predictions.
    - embeddings: (V*B, D) the normalised prototype-layer inputs; needed with a queue.
    - prototypes: (K, D) prototype weights; needed to score the queue.
    - use_queue: False keeps the queue untouched and unused (SwAV starts it at an epoch).
    Returns ``{"loss"}``, float32, autocast disabled.

    Queue (``queue_length`` > 0): buffer ``queue`` (len(crops_for_assign), L, D), newest first,
    filled with the embeddings of the assigned crops of every rank (gathered, rank-major blocks of
    world*B rows), so it is identical on all ranks. Once full, rank r's codes are computed on its own
    L / world past rows (SwAV's per-GPU queue) followed by the current batch, and only the batch's
    codes are kept. L is the total over ranks (SwAV's ``--queue_length``) and must be a multiple of
    world*B. ``queue_filled`` (buffer) counts the rows written so far.

    Args:
        num_crops: V, all crops (SwAV: sum of ``--nmb_crops``, e.g. 2 + 6).
        crops_for_assign: crops whose codes are computed (0, 1).
        temperature: T of the predictions (0.1).
        epsilon: Sinkhorn regularisation (0.05).
        sinkhorn_iterations: 3.
        queue_length: L, 0 = no queue.
        feat_dim: D, embedding size stored in the queue (128).
    """

    queue: Tensor
    queue_filled: Tensor

    def __init__(
        self,
        num_crops: int = 2,
        crops_for_assign: Sequence[int] = (0, 1),
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        queue_length: int = 0,
        feat_dim: int = 128,
    ) -> None:
        super().__init__()
        if num_crops < 2:
            raise ValueError(f"num_crops must be >= 2 (codes are predicted from other crops), got {num_crops}.")
        crops = tuple(int(c) for c in crops_for_assign)
        if not crops or len(set(crops)) != len(crops) or not all(0 <= c < num_crops for c in crops):
            raise ValueError(f"crops_for_assign must be distinct crop indices in [0, {num_crops}), got {crops}.")
        for name, value in (("temperature", temperature), ("epsilon", epsilon), ("feat_dim", feat_dim)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}.")
        if sinkhorn_iterations < 1:
            raise ValueError(f"sinkhorn_iterations must be >= 1, got {sinkhorn_iterations}.")
        if queue_length < 0:
            raise ValueError(f"queue_length must be >= 0, got {queue_length}.")
        self.num_crops, self.crops_for_assign = num_crops, crops
        self.temperature, self.epsilon, self.sinkhorn_iterations = temperature, epsilon, sinkhorn_iterations
        self.queue_length, self.feat_dim = queue_length, feat_dim
        if queue_length:
            self.register_buffer("queue", torch.zeros(len(crops), queue_length, feat_dim))
            self.register_buffer("queue_filled", torch.zeros(1, dtype=torch.long))

    def _own_rows(self, i: int, b: int) -> Tensor:
        """This rank's (L / world, D) share of queue ``i``, newest first."""
        w = get_world_size()
        return self.queue[i].view(-1, w, b, self.feat_dim)[:, get_rank()].reshape(-1, self.feat_dim)

    @torch.no_grad()
    def _fill(self, embeddings: Tensor, b: int) -> None:
        for i, c in enumerate(self.crops_for_assign):
            new = all_gather_no_grad(embeddings[c * b : (c + 1) * b]).to(self.queue.dtype)  # (world*B, D)
            self.queue[i] = torch.cat([new, self.queue[i, : -new.shape[0]]])
        self.queue_filled.fill_(min(int(self.queue_filled) + new.shape[0], self.queue_length))

    def forward(
        self,
        scores: Tensor,
        embeddings: Tensor | None = None,
        prototypes: Tensor | None = None,
        use_queue: bool = True,
    ) -> dict[str, Tensor]:
        v = self.num_crops
        if scores.dim() != 2 or scores.shape[0] % v:
            raise ValueError(f"scores must be (num_crops*B, K) with num_crops={v}, got {tuple(scores.shape)}.")
        b = scores.shape[0] // v
        queued = bool(self.queue_length) and use_queue
        if queued:
            self._check_queue_inputs(scores, embeddings, prototypes, b)
        with torch.autocast(device_type=scores.device.type, enabled=False):
            s = scores.float()
            log_p = F.log_softmax(s / self.temperature, dim=1).view(v, b, -1)
            ready = queued and int(self.queue_filled) >= self.queue_length
            loss = s.new_zeros(())
            for i, c in enumerate(self.crops_for_assign):
                with torch.no_grad():
                    target = s[c * b : (c + 1) * b].detach()
                    if ready:
                        past = self._own_rows(i, b).float() @ prototypes.detach().float().T  # type: ignore[union-attr]
                        target = torch.cat([past, target])
                    codes = sinkhorn_knopp(target, self.epsilon, self.sinkhorn_iterations)[-b:]
                others = [u for u in range(v) if u != c]
                sub = sum(-(codes * log_p[u]).sum(dim=1).mean() for u in others)
                loss = loss + sub / (v - 1)
            loss = loss / len(self.crops_for_assign)
        if queued:
            self._fill(embeddings.detach(), b)  # type: ignore[union-attr]
        return {"loss": loss}

    def _check_queue_inputs(self, scores: Tensor, embeddings: Tensor | None, prototypes: Tensor | None, b: int) -> None:
        if embeddings is None or prototypes is None:
            raise ValueError("SwAVLoss with queue_length > 0 needs embeddings and prototypes (or use_queue=False).")
        if embeddings.shape != (scores.shape[0], self.feat_dim) or prototypes.shape != (scores.shape[1], self.feat_dim):
            raise ValueError(
                f"expected embeddings ({scores.shape[0]}, {self.feat_dim}) and prototypes "
                f"({scores.shape[1]}, {self.feat_dim}) (feat_dim={self.feat_dim}); "
                f"got {tuple(embeddings.shape)} and {tuple(prototypes.shape)}."
            )
        block = b * get_world_size()
        if self.queue_length % block:
            raise ValueError(
                f"queue_length {self.queue_length} must be a multiple of world_size*B = {block} "
                f"(SwAV trims it to one)."
            )
