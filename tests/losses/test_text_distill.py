import math

import pytest
import torch

from hirl_like.losses.text_distill import TextDistillLoss
from tests.losses._reference import row, soft_ce, softmax


def _inputs(seed=0, b=3, length=5, k=4):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(b, length, k, generator=gen, requires_grad=True)
    t = torch.randn(b, length, k, generator=gen)
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)  # (1, 3) is padding
    return s, t, mask, valid


def test_matches_naive_loop():
    s, t, mask, valid = _inputs()
    loss_fn = TextDistillLoss(out_dim=4, student_temp=0.2)
    loss_fn.center.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 1, 4))
    c = loss_fn.center[0, 0].clone()
    out = loss_fn(s, t, mask, valid, teacher_temp=0.05)
    ref = 0.0
    for i in range(3):
        scored = [j for j in range(5) if mask[i, j] and valid[i, j]]
        tot = 0.0
        for j in scored:
            target = softmax([(t[i, j, k] - c[k]) / 0.05 for k in range(4)])
            tot = tot + soft_ce(target, [x / 0.2 for x in row(s[i, j])])
        ref = ref + tot / max(len(scored), 1)
    ref = ref / 3
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(out["loss"], s)[0], torch.autograd.grad(ref, s)[0],
                               rtol=1e-4, atol=1e-6)


def test_centre_uses_raw_valid_tokens_only():
    s, t, mask, valid = _inputs(1)
    t = t.masked_fill(~valid[..., None], 1e4)  # garbage in padding must not leak into the centre
    loss_fn = TextDistillLoss(out_dim=4, center_momentum=0.8)
    loss_fn(s, t, mask, valid, 0.04)
    raw_mean = t[valid].mean(0)  # mean over the 10 real tokens of raw outputs (not softmax)
    torch.testing.assert_close(loss_fn.center, (0.2 * raw_mean).view(1, 1, 4))
    assert loss_fn.center.abs().max() < 10  # padding's 1e4 excluded
    assert "center" in loss_fn.state_dict()


def test_uniform_gives_log_k():
    k = 6
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[:, 1] = True
    out = TextDistillLoss(out_dim=k)(torch.zeros(2, 3, k), torch.zeros(2, 3, k), mask, torch.ones(2, 3, dtype=torch.bool), 0.04)
    assert out["loss"].item() == pytest.approx(math.log(k), rel=1e-6)


def test_wrong_out_dim_is_rejected():
    s, t, mask, valid = _inputs()
    with pytest.raises(ValueError, match="out_dim"):
        TextDistillLoss(out_dim=8)(s, t, mask, valid, 0.04)
