import math

import pytest
import torch

from hirl_like.losses.dino import DINOLoss
from hirl_like.losses.ibot import IBOTLoss
from tests.losses._reference import row, soft_ce, softmax


def test_matches_naive_pair_loop_and_updates_centre():
    g_views, loc, b, k = 2, 2, 3, 5
    gen = torch.Generator().manual_seed(0)
    s = torch.randn((g_views + loc) * b, k, generator=gen, requires_grad=True)
    t = torch.randn(g_views * b, k, generator=gen)
    loss_fn = DINOLoss(out_dim=k, global_crops=g_views, local_crops=loc, student_temp=0.2)
    loss_fn.center.fill_(0.3)
    out = loss_fn(s, t, teacher_temp=0.05)
    total, pairs = 0.0, 0
    for q in range(g_views):
        for v in range(g_views + loc):
            if v != q:
                for i in range(b):
                    target = softmax([(t[q * b + i, j] - 0.3) / 0.05 for j in range(k)])
                    total = total + soft_ce(target, [x / 0.2 for x in row(s[v * b + i])]) / b
                pairs += 1
    ref = total / pairs
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(out["loss"], s)[0], torch.autograd.grad(ref, s)[0],
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss_fn.center, 0.9 * 0.3 + 0.1 * t.mean(0, keepdim=True))
    assert "center" in loss_fn.state_dict()


def test_uniform_gives_log_k():
    out = DINOLoss(out_dim=9)(torch.zeros(4, 9), torch.zeros(4, 9), 0.04)
    assert out["loss"].item() == pytest.approx(math.log(9), rel=1e-6)


def test_equals_ibot_cls_term():
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 4, generator=gen), torch.randn(4, 4, generator=gen)
    dino = DINOLoss(out_dim=4, local_crops=1)(s, t, 0.04)["loss"]
    ibot = IBOTLoss(out_dim=4, patch_out_dim=2, local_crops=1)(
        s, torch.zeros(4, 3, 2), t, torch.zeros(4, 3, 2), torch.zeros(4, 3, dtype=torch.bool), 0.04, 0.04
    )["cls"]
    torch.testing.assert_close(dino, ibot)


def test_rejects_single_view():
    with pytest.raises(ValueError, match="global_crops"):
        DINOLoss(global_crops=1, local_crops=0)
