"""SimSiam: symmetric negative cosine against a loop reference; stop-gradient on z."""

import pytest
import torch
from torch import nn

from hirl_like.losses.simsiam import SimSiamLoss
from hirl_like.registry import LOSSES
from tests.losses._reference import dot


def naive_simsiam(p1, p2, z1, z2):
    """D(p1, z2)/2 + D(p2, z1)/2 with D(p, z) = -(1/B) sum_b p_b.z_b / (|p_b| |z_b|), z constant."""
    b = p1.shape[0]

    def d(p, z):
        total = 0.0
        for i in range(b):
            zi = z[i].detach()
            total = total - dot(p[i], zi) / (torch.sqrt(dot(p[i], p[i])) * torch.sqrt(dot(zi, zi))) / b
        return total

    return d(p1, z2) / 2 + d(p2, z1) / 2


def test_matches_naive_loss_and_gradients_and_no_gradient_reaches_z():
    gen = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(5, 4, generator=gen, requires_grad=True) for _ in range(4))
    out = SimSiamLoss()(p1, p2, z1, z2)
    ref = naive_simsiam(p1, p2, z1, z2)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-6)
    g = torch.autograd.grad(out["loss"], (p1, p2, z1, z2), allow_unused=True)
    rg = torch.autograd.grad(ref, (p1, p2))
    for a, b in zip(g[:2], rg):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert g[2] is None and g[3] is None


def test_stop_gradient_through_a_shared_encoder():
    # z = f(x), p = h(z): the encoder f gets gradient only through the predictor path h(f(x)).
    torch.manual_seed(0)
    f, h = nn.Linear(3, 4), nn.Linear(4, 4)
    x1, x2 = torch.randn(6, 3), torch.randn(6, 3)
    z1, z2 = f(x1), f(x2)
    SimSiamLoss()(h(z1), h(z2), z1, z2)["loss"].backward()
    got = [w.grad.clone() for w in f.parameters()]
    f.zero_grad()
    # the same loss with the targets computed by an independent frozen copy of f
    g = nn.Linear(3, 4)
    g.load_state_dict(f.state_dict())
    g.requires_grad_(False)
    z1c, z2c = f(x1), f(x2)
    naive_simsiam(h(z1c), h(z2c), g(x1), g(x2)).backward()
    for a, w in zip(got, f.parameters()):
        torch.testing.assert_close(a, w.grad, rtol=1e-4, atol=1e-6)


def test_minimum_is_minus_one_and_scale_invariant():
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    out = SimSiamLoss()(3 * z2, 0.5 * z1, z1, z2)  # p1 along z2, p2 along z1
    assert out["loss"].item() == pytest.approx(-1.0, abs=1e-6)
    assert SimSiamLoss()(-z2, -z1, z1, z2)["loss"].item() == pytest.approx(1.0, abs=1e-6)


def test_collapse_monitor():
    z = torch.ones(8, 16)
    assert SimSiamLoss()(z, z, z, z)["z_std"].item() == pytest.approx(0.0, abs=1e-7)
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(4096, 16, generator=gen)
    std = SimSiamLoss()(z, z, z, z)["z_std"]
    assert std.item() == pytest.approx(16**-0.5, rel=0.05) and not std.requires_grad


def test_registered_and_shapes_checked():
    assert isinstance(LOSSES.build({"name": "SimSiamLoss"}), SimSiamLoss)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        SimSiamLoss()(torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 4))
