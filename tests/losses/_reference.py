"""Naive building blocks for the reference implementations in the loss tests.

Everything works on Python lists of 0-dim tensors, one element at a time, so each reference spells
its formula out with explicit loops; autograd still flows, so gradients can be compared too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def dot(a: Tensor, b: Tensor) -> Tensor:
    total = a[0] * b[0]
    for k in range(1, a.shape[0]):
        total = total + a[k] * b[k]
    return total


def logsumexp(xs: list[Tensor]) -> Tensor:
    m = max(float(x.detach()) for x in xs)
    total = sum(torch.exp(x - m) for x in xs)
    return torch.log(total) + m


def log_softmax(xs: list[Tensor]) -> list[Tensor]:
    lse = logsumexp(xs)
    return [x - lse for x in xs]


def softmax(xs: list[Tensor]) -> list[Tensor]:
    return [torch.exp(v) for v in log_softmax(xs)]


def logsigmoid(x: Tensor) -> Tensor:
    # log(1 / (1 + e^-x)), written stably
    return -torch.log1p(torch.exp(-x)) if float(x.detach()) >= 0 else x - torch.log1p(torch.exp(x))


def soft_ce(target: list[Tensor], logits: list[Tensor]) -> Tensor:
    """-sum_k target_k * log_softmax(logits)_k."""
    logp = log_softmax(logits)
    return -sum(t * lp for t, lp in zip(target, logp))


def row(x: Tensor) -> list[Tensor]:
    return [x[k] for k in range(x.shape[0])]


LOG = math.log
