import math

import pytest
import torch

from hirl_like.losses.ibot import IBOTLoss
from tests.losses._reference import row, soft_ce, softmax


def naive_h(s, t, c, ts, tt):
    return soft_ce(softmax([(t[k] - c[k]) / tt for k in range(t.shape[0])]), [x / ts for x in row(s)])


def naive_ibot(s_cls, s_patch, t_cls, t_patch, masks, center, center2, g, v_views, tt, tt2, l1=0.5, l2=0.5, ts=0.1):
    """The iBOT reference loop: pairs of views, images, patches."""
    b = t_cls.shape[0] // g
    cls, n_cls, patch, n_patch = 0.0, 0, 0.0, 0
    for q in range(g):
        for v in range(v_views):
            if v == q:
                per_image = 0.0
                for i in range(b):
                    n_masked = int(masks[q * b + i].sum())
                    tot = 0.0
                    for p in range(masks.shape[1]):
                        if masks[q * b + i, p]:
                            tot = tot + naive_h(s_patch[v * b + i, p], t_patch[q * b + i, p], center2[0, 0], ts, tt2)
                    per_image = per_image + tot / max(n_masked, 1)
                patch, n_patch = patch + per_image / b, n_patch + 1
            else:
                per_image = sum(naive_h(s_cls[v * b + i], t_cls[q * b + i], center[0], ts, tt) for i in range(b))
                cls, n_cls = cls + per_image / b, n_cls + 1
    cls, patch = cls / n_cls, patch / n_patch
    return l1 * cls + l2 * patch, cls, patch


def _inputs(g=2, loc=1, b=2, n=4, k=5, k2=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    s_cls = torch.randn((g + loc) * b, k, generator=gen, requires_grad=True)
    s_patch = torch.randn(g * b, n, k2, generator=gen, requires_grad=True)
    t_cls = torch.randn(g * b, k, generator=gen)
    t_patch = torch.randn(g * b, n, k2, generator=gen)
    masks = torch.rand(g * b, n, generator=gen) < 0.5
    masks[0] = False  # one image with nothing masked
    masks[1, 0] = True
    return s_cls, s_patch, t_cls, t_patch, masks


def test_matches_naive_loop_over_two_steps_with_centre_updates():
    loss_fn = IBOTLoss(out_dim=5, patch_out_dim=6, global_crops=2, local_crops=1, lambda1=0.7, lambda2=0.4)
    for step in range(2):  # the second step uses the centres updated by the first
        s_cls, s_patch, t_cls, t_patch, masks = _inputs(seed=step)
        c, c2 = loss_fn.center.clone(), loss_fn.center2.clone()
        out = loss_fn(s_cls, s_patch, t_cls, t_patch, masks, teacher_temp=0.04, teacher_temp2=0.06)
        ref, ref_cls, ref_patch = naive_ibot(s_cls, s_patch, t_cls, t_patch, masks, c, c2, 2, 3, 0.04, 0.06, 0.7, 0.4)
        torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["cls"], ref_cls.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["patch"], ref_patch.detach(), rtol=1e-5, atol=1e-5)
        g = torch.autograd.grad(out["loss"], (s_cls, s_patch))
        rg = torch.autograd.grad(ref, (s_cls, s_patch))
        for a, b in zip(g, rg):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(loss_fn.center, 0.9 * c + 0.1 * t_cls.mean(0, keepdim=True))
        torch.testing.assert_close(loss_fn.center2, 0.9 * c2 + 0.1 * t_patch.mean(dim=(0, 1), keepdim=True))
    assert step == 1 and loss_fn.center.abs().sum() > 0


def test_uniform_teacher_and_student_give_log_k():
    k = 11
    loss_fn = IBOTLoss(out_dim=k, patch_out_dim=k, local_crops=2, lambda1=1.0, lambda2=1.0)
    masks = torch.ones(4, 3, dtype=torch.bool)
    out = loss_fn(torch.zeros(8, k), torch.zeros(4, 3, k), torch.zeros(4, k), torch.zeros(4, 3, k), masks, 0.04, 0.07)
    assert out["cls"].item() == pytest.approx(math.log(k), rel=1e-6)
    assert out["patch"].item() == pytest.approx(math.log(k), rel=1e-6)
    assert out["loss"].item() == pytest.approx(2 * math.log(k), rel=1e-6)


def test_centres_are_persistent_buffers():
    sd = IBOTLoss(out_dim=4, patch_out_dim=3).state_dict()
    assert sd["center"].shape == (1, 4) and sd["center2"].shape == (1, 1, 3)


def test_patch_only_single_view():
    loss_fn = IBOTLoss(out_dim=3, patch_out_dim=3, global_crops=1, lambda1=0.0, lambda2=1.0)
    s_patch = torch.randn(2, 4, 3, requires_grad=True)
    out = loss_fn(torch.randn(2, 3), s_patch, torch.randn(2, 3), torch.randn(2, 4, 3), torch.ones(2, 4, dtype=torch.bool),
                  0.04, 0.04)
    assert out["cls"].item() == 0.0
    out["loss"].backward()
    assert s_patch.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="lambda1=0"):
        IBOTLoss(global_crops=1)


def test_wrong_view_count_is_rejected():
    s_cls, s_patch, t_cls, t_patch, masks = _inputs(loc=1)
    loss_fn = IBOTLoss(out_dim=5, patch_out_dim=6, local_crops=2)
    with pytest.raises(ValueError, match="views"):
        loss_fn(s_cls, s_patch, t_cls, t_patch, masks, 0.04, 0.04)


def test_cls_target_entropy_is_the_mean_entropy_of_the_centred_targets():
    loss_fn = IBOTLoss(out_dim=5, patch_out_dim=6, global_crops=2, local_crops=1)
    for step in range(2):  # the second step's targets use the centre updated by the first
        s_cls, s_patch, t_cls, t_patch, masks = _inputs(seed=step)
        c = loss_fn.center.clone()
        out = loss_fn(s_cls, s_patch, t_cls, t_patch, masks, teacher_temp=0.04, teacher_temp2=0.06)
        entropies = []
        for r in range(t_cls.shape[0]):
            p = softmax([(t_cls[r, k] - c[0, k]) / 0.04 for k in range(5)])
            entropies.append(-sum(float(x) * math.log(float(x)) for x in p if float(x) > 0))
        assert float(out["cls_target_entropy"]) == pytest.approx(sum(entropies) / len(entropies), rel=1e-4, abs=1e-6)
    # identical teacher rows equal to the centre give uniform targets: ln K
    uniform = IBOTLoss(out_dim=5, patch_out_dim=6, global_crops=2, local_crops=0)
    s_cls, s_patch, _, t_patch, masks = _inputs(loc=0)
    out = uniform(s_cls, s_patch, torch.zeros(4, 5), t_patch, masks, teacher_temp=0.04, teacher_temp2=0.06)
    assert float(out["cls_target_entropy"]) == pytest.approx(math.log(5), rel=1e-6)
