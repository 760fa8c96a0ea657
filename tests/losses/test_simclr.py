import math

import pytest
import torch
import torch.nn.functional as F

from hirl_like.losses.simclr import SimCLRLoss
from tests.losses._reference import dot, logsumexp


def naive_simclr(z1, z2, tau):
    b = z1.shape[0]
    a = [z1[i] / torch.sqrt(dot(z1[i], z1[i])) for i in range(b)]
    c = [z2[i] / torch.sqrt(dot(z2[i], z2[i])) for i in range(b)]
    total = 0.0
    for x, y in ((a, c), (c, a)):  # anchors from one view, positives from the other
        for i in range(b):
            cross = [dot(x[i], y[j]) / tau for j in range(b)]
            same = [dot(x[i], x[j]) / tau for j in range(b) if j != i]  # self-similarity excluded
            total = total + (logsumexp(cross + same) - cross[i]) / b
    return total / 2


def test_matches_naive_loss_and_gradients():
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(5, 4, generator=gen, requires_grad=True)
    z2 = torch.randn(5, 4, generator=gen, requires_grad=True)
    out = SimCLRLoss(temperature=0.2)(z1, z2)
    ref = naive_simclr(z1, z2, 0.2)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(out["loss"], (z1, z2))
    rg = torch.autograd.grad(ref, (z1, z2))
    for a, b in zip(g, rg):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not out["acc"].requires_grad


def test_identical_features_give_log_2b_minus_1():
    b = 6
    z = torch.ones(b, 3)
    out = SimCLRLoss()(z, z.clone())
    assert out["loss"].item() == pytest.approx(math.log(2 * b - 1), rel=1e-6)


def test_accuracy_in_percent():
    z = torch.eye(4, 5)
    assert SimCLRLoss()(z, z.clone())["acc"].item() == pytest.approx(100.0)
    assert SimCLRLoss()(z, z.roll(1, dims=0))["acc"].item() == pytest.approx(0.0)


def test_scale_invariant_inputs_are_normalised():
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    a = SimCLRLoss()(z1, z2)["loss"]
    b = SimCLRLoss()(3 * z1, F.normalize(z2, dim=-1))["loss"]
    torch.testing.assert_close(a, b)
