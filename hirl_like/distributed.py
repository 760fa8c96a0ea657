"""Process-group primitives used by losses, pipelines and the engine (no engine imports here).

Every function works without an initialised process group (one process): gathers return the
input, reductions are identities. Backend choice and process-group set-up live in
``hirl_like.engine.dist_setup``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this rank's slice of the summed gradient.

    Every rank computes a loss over the gathered tensor; the gradient w.r.t. the local input
    is the sum over ranks of d(loss_r)/d(x_local), hence the all_reduce in backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        all_grads = torch.stack(grads)
        dist.all_reduce(all_grads)
        return all_grads[dist.get_rank()]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) per rank -> (world*B, ...), rank-major; gradient flows to the local part.

    The local slice is the input tensor itself, so autograd sees the exact local graph.
    """
    if not is_distributed() or get_world_size() == 1:
        return x
    parts = list(_GatherWithGrad.apply(x))
    parts[get_rank()] = x
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) per rank -> (world*B, ...), rank-major, detached. Every rank must pass the same B."""
    if not is_distributed() or get_world_size() == 1:
        return x.detach()
    out = [torch.zeros_like(x) for _ in range(get_world_size())]
    dist.all_gather(out, x.detach().contiguous())
    return torch.cat(out, dim=0)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed() or get_world_size() == 1:
        return x.clone()
    y = x.detach().clone()
    dist.all_reduce(y)
    return y
