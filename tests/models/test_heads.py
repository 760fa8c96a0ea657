"""DINOHead / NormalizedLinear / ProjectionMLP: shapes, formula against a hand-written forward, weight norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hirl_like.models.heads import DINOHead, NormalizedLinear, ProjectionMLP
from hirl_like.registry import MODELS


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


# ---------------------------------------------------------------------------------------- DINOHead
@pytest.mark.parametrize("nlayers", [1, 2, 3])
def test_dino_head_shapes_2d_and_3d(nlayers: int) -> None:
    torch.manual_seed(0)
    head = DINOHead(in_dim=12, out_dim=40, hidden_dim=16, bottleneck_dim=8, nlayers=nlayers)
    assert len(_linears(head.mlp)) == nlayers  # the last layer is not an nn.Linear
    assert head(torch.randn(5, 12)).shape == (5, 40)
    assert head(torch.randn(3, 7, 12)).shape == (3, 7, 40)


def test_dino_head_token_wise_on_3d_input() -> None:
    torch.manual_seed(0)
    head = DINOHead(in_dim=12, out_dim=20, hidden_dim=16, bottleneck_dim=8).eval()
    x = torch.randn(2, 5, 12)
    out = head(x)
    for b in range(2):
        for n in range(5):
            torch.testing.assert_close(out[b, n], head(x[b, n][None])[0], rtol=1e-5, atol=1e-6)


def test_dino_head_matches_hand_written_forward() -> None:
    torch.manual_seed(0)
    head = DINOHead(in_dim=6, out_dim=10, hidden_dim=9, bottleneck_dim=4, nlayers=3)
    l1, l2, l3 = _linears(head.mlp)
    x = torch.randn(3, 6)
    h = F.gelu(x @ l1.weight.T + l1.bias)
    h = F.gelu(h @ l2.weight.T + l2.bias)
    z = h @ l3.weight.T + l3.bias
    out = torch.empty(3, 10)
    w = head.last_layer.weight
    for i in range(3):
        zi = z[i] / z[i].norm()
        for k in range(10):
            out[i, k] = (zi * w[k]).sum() / w[k].norm()
    torch.testing.assert_close(head(x), out, rtol=1e-5, atol=1e-6)


def test_dino_head_analytic_value_and_cosine_bound() -> None:
    head = DINOHead(in_dim=2, out_dim=2, hidden_dim=4, bottleneck_dim=2, nlayers=1)
    with torch.no_grad():
        head.mlp.weight.copy_(torch.eye(2))
        head.mlp.bias.zero_()
        head.last_layer.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, -2.0]]))
    # z = (1, 1)/sqrt(2); rows -> (0.6, 0.8), (0, -1)
    out = head(torch.tensor([[5.0, 5.0]]))
    expected = torch.tensor([[(0.6 + 0.8) / 2**0.5, -1 / 2**0.5]])
    torch.testing.assert_close(out, expected)
    # outputs are cosines: bounded by 1 whatever the input scale
    assert head(torch.randn(50, 2) * 100).abs().max() <= 1 + 1e-6


def test_dino_head_init_trunc_normal_zero_bias() -> None:
    torch.manual_seed(0)
    head = DINOHead(in_dim=64, out_dim=16, hidden_dim=256, bottleneck_dim=32)
    for lin in _linears(head.mlp):
        assert torch.all(lin.bias == 0)
        assert lin.weight.abs().max() <= 2.0  # trunc_normal_ cuts at +-2 (absolute)
        assert 0.015 < lin.weight.std().item() < 0.025


def test_harmony_text_head_config() -> None:
    head = DINOHead(in_dim=512, out_dim=8192 // 4, hidden_dim=1024, bottleneck_dim=256, nlayers=2)
    assert [(lin.in_features, lin.out_features) for lin in _linears(head.mlp)] == [(512, 1024), (1024, 256)]
    assert head(torch.randn(2, 77, 512)).shape == (2, 77, 2048)


def test_normalized_last_layer_rows_unit_norm_after_step() -> None:
    torch.manual_seed(0)
    head = DINOHead(in_dim=8, out_dim=12, hidden_dim=16, bottleneck_dim=4)
    assert isinstance(head.last_layer, NormalizedLinear)
    before = head.last_layer.weight.detach().clone()
    opt = torch.optim.SGD(head.parameters(), lr=10.0)
    head(torch.randn(6, 8)).pow(2).sum().backward()
    opt.step()
    assert not torch.allclose(head.last_layer.weight, before)  # it did train
    # effective weight read off the layer's behaviour: f(I) = W_eff^T
    w_eff = head.last_layer(torch.eye(4)).T
    torch.testing.assert_close(w_eff.norm(dim=1), torch.ones(12))
    torch.testing.assert_close(head.last_layer.effective_weight(), w_eff)
    assert not torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(12))  # the raw V is not normalised


def test_normalized_linear_equals_weight_norm_with_fixed_g() -> None:
    """Outputs and gradients of V equal those of torch's weight_norm with g frozen at 1."""
    torch.manual_seed(0)
    ours = NormalizedLinear(5, 7)
    ref = nn.utils.parametrizations.weight_norm(nn.Linear(5, 7, bias=False), name="weight", dim=0)
    with torch.no_grad():
        ref.parametrizations.weight.original0.fill_(1.0)
        ref.parametrizations.weight.original1.copy_(ours.weight)
    ref.parametrizations.weight.original0.requires_grad_(False)
    x = torch.randn(4, 5)
    target = torch.randn(4, 7)
    y_ours, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y_ours, y_ref)
    ((y_ours - target) ** 2).sum().backward()
    ((y_ref - target) ** 2).sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.parametrizations.weight.original1.grad)


def test_unnormalized_last_layer_has_learnable_norm() -> None:
    torch.manual_seed(0)
    head = DINOHead(in_dim=8, out_dim=12, hidden_dim=16, bottleneck_dim=4, norm_last_layer=False)
    g = head.last_layer.parametrizations.weight.original0
    assert g.requires_grad
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(12))  # starts at 1
    opt = torch.optim.SGD(head.parameters(), lr=1.0)
    head(torch.randn(6, 8)).sum().backward()
    opt.step()
    assert not torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(12))


def test_dino_head_bn_on_3d_input_uses_all_tokens() -> None:
    torch.manual_seed(0)
    head = DINOHead(in_dim=6, out_dim=10, hidden_dim=8, bottleneck_dim=4, nlayers=2, use_bn=True)
    assert any(isinstance(m, nn.BatchNorm1d) for m in head.mlp)
    x = torch.randn(3, 5, 6)
    torch.testing.assert_close(head(x), head(x.reshape(15, 6)).reshape(3, 5, 10))


def test_dino_head_registered_and_validates() -> None:
    head = MODELS.build({"name": "DINOHead", "in_dim": 4, "out_dim": 6, "hidden_dim": 5, "bottleneck_dim": 3})
    assert isinstance(head, DINOHead)
    with pytest.raises(ValueError, match="nlayers"):
        DINOHead(in_dim=4, nlayers=0)
    with pytest.raises(ValueError, match="out_dim"):
        DINOHead(in_dim=4, out_dim=0)


# ----------------------------------------------------------------------------------- ProjectionMLP
def test_projection_mlp_structure_and_shape() -> None:
    torch.manual_seed(0)
    mlp = ProjectionMLP(in_dim=10, hidden_dims=(32, 32), out_dim=8)
    kinds = [type(m) for m in mlp.mlp]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert mlp(torch.randn(6, 10)).shape == (6, 8)
    assert MODELS.get("ProjectionMLP") is ProjectionMLP


def test_projection_mlp_matches_hand_written_forward() -> None:
    torch.manual_seed(0)
    mlp = ProjectionMLP(in_dim=5, hidden_dims=(7,), out_dim=3).train()
    x = torch.randn(8, 5)
    l1, bn, _, l2 = mlp.mlp
    h = x @ l1.weight.T + l1.bias
    mean, var = h.mean(0), h.var(0, unbiased=False)  # training-mode BN: batch statistics
    h = torch.relu((h - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias)
    torch.testing.assert_close(mlp(x), h @ l2.weight.T + l2.bias, rtol=1e-5, atol=1e-5)


def test_projection_mlp_options() -> None:
    torch.manual_seed(0)
    plain = ProjectionMLP(in_dim=4, hidden_dims=(), out_dim=2, norm=None)
    assert [type(m) for m in plain.mlp] == [nn.Linear]
    ln = ProjectionMLP(in_dim=4, hidden_dims=(6,), out_dim=3, norm="ln", last_norm=True)
    out = ln(torch.randn(5, 4))
    torch.testing.assert_close(out.mean(-1), torch.zeros(5), atol=1e-5, rtol=0)  # affine-free final LN
    bn = ProjectionMLP(in_dim=4, hidden_dims=(6,), out_dim=3, last_norm=True)
    assert not bn.mlp[-1].affine
    with pytest.raises(ValueError, match="norm"):
        ProjectionMLP(in_dim=4, norm="group")
    with pytest.raises(ValueError, match="last_norm"):
        ProjectionMLP(in_dim=4, norm=None, last_norm=True)
