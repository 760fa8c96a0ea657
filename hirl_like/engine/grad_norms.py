"""Per-objective gradient norms on the shared encoder, measured on the step's own graph.

Harmony sums five terms on one student ViT; how hard each term pulls on it is the first thing to
look at when one term dominates or stalls. Each (weighted) term is differentiated with
``torch.autograd.grad(term, params, retain_graph=True)`` on the graph the forward already built,
before the step's backward, so nothing runs a second forward and the training result is unchanged:
``autograd.grad`` returns the gradients instead of accumulating them into ``.grad``.

Under DDP this runs no gradient hook: the engine does not execute the ``AccumulateGrad`` nodes of
the parameters it returns gradients for, and those nodes carry DDP's hooks (checked by
``tests/engine/test_grad_norms_ddp.py``). Collectives inside the graph (the CLIP gather's backward
all-reduce) do run; every rank measures at the same iterations, so they match. The value is the
norm of this rank's gradient, before DDP averages over ranks; rank 0's is logged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def objective_grad_norms(
    terms: Mapping[str, torch.Tensor], params: Sequence[torch.Tensor], scale: float = 1.0
) -> dict[str, float]:
    """{name: ||d term / d params||_2} for every term whose graph reaches ``params``.

    Args:
        terms: name -> 0-d loss term attached to its graph (the weighted term ``w_k * L_k``).
        params: the parameters the norm is taken over (the shared student ViT).
        scale: the loss scale of fp16 training: each term is differentiated times ``scale`` (so
            small fp16 gradients do not flush to zero, as in the real backward) and the norm is
            divided by it.
    Returns:
        Norms as floats; a term that does not reach ``params`` (a text-only objective) is left out.
    """
    norms: dict[str, float] = {}
    params = list(params)
    for name, term in terms.items():
        if not term.requires_grad or not params:
            continue
        grads = torch.autograd.grad(term * scale, params, retain_graph=True, allow_unused=True)
        grads = [g for g in grads if g is not None]
        if not grads:
            continue
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([g.float() for g in grads])))
        norms[name] = float(total) / scale
    return norms
