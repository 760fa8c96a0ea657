import math

import pytest
import torch
import torch.nn.functional as F

from hirl_like.losses.clip import ClipLoss
from hirl_like.registry import LOSSES
from tests.losses._reference import dot, logsumexp, soft_ce, softmax


def _features(b: int, d: int, seed: int, grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1).float()
    return x.requires_grad_(grad)


def naive_clip(img, txt, s, hard_weight=1.0, t_img=None, t_txt=None, tau=0.1):
    """Explicit loops over rows and columns; single process."""
    b = img.shape[0]
    i2t = [[s * dot(img[i], txt[j]) for j in range(b)] for i in range(b)]
    t2i = [[s * dot(txt[i], img[j]) for j in range(b)] for i in range(b)]
    hard_i = sum(logsumexp(i2t[i]) - i2t[i][i] for i in range(b)) / b
    hard_t = sum(logsumexp(t2i[i]) - t2i[i][i] for i in range(b)) / b
    hard = (hard_i + hard_t) / 2
    if t_img is None:
        return hard, None
    soft_i = sum(soft_ce(softmax([dot(t_img[i], t_txt[j]) / tau for j in range(b)]), i2t[i]) for i in range(b)) / b
    soft_t = sum(soft_ce(softmax([dot(t_txt[i], t_img[j]) / tau for j in range(b)]), t2i[i]) for i in range(b)) / b
    soft = (soft_i + soft_t) / 2
    return hard_weight * hard + (1 - hard_weight) * soft, soft


def test_hard_matches_naive_loss_and_gradients():
    img, txt = _features(5, 4, 0, grad=True), _features(5, 4, 1, grad=True)
    s = torch.tensor(3.7, requires_grad=True)
    out = ClipLoss()(img, txt, s)
    assert set(out) == {"loss", "hard", "logit_scale"}
    grads = torch.autograd.grad(out["loss"], (img, txt, s))
    ref, _ = naive_clip(img, txt, s)
    ref_grads = torch.autograd.grad(ref, (img, txt, s))
    torch.testing.assert_close(out["loss"], ref.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["hard"], ref.detach().float(), rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    assert not out["hard"].requires_grad and not out["logit_scale"].requires_grad
    assert out["logit_scale"].item() == pytest.approx(3.7)


def test_soft_targets_match_naive():
    img, txt = _features(6, 4, 2, grad=True), _features(6, 4, 3, grad=True)
    t_img, t_txt = _features(6, 4, 4), _features(6, 4, 5)
    s = torch.tensor(5.0)
    out = ClipLoss(soft_temperature=0.2)(img, txt, s, hard_weight=0.3, teacher_image_features=t_img,
                                         teacher_text_features=t_txt)
    ref, ref_soft = naive_clip(img, txt, s, 0.3, t_img, t_txt, tau=0.2)
    torch.testing.assert_close(out["loss"], ref.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["soft"], ref_soft.detach().float(), rtol=1e-5, atol=1e-6)
    g = torch.autograd.grad(out["loss"], (img, txt))
    rg = torch.autograd.grad(ref, (img, txt))
    for a, b in zip(g, rg):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_orthogonal_aligned_features_at_large_scale_give_zero():
    x = torch.eye(4, 8)
    out = ClipLoss()(x, x.clone(), torch.tensor(100.0))
    assert out["loss"].item() < 1e-6


def test_all_equal_features_give_log_batch():
    x = F.normalize(torch.ones(7, 3), dim=-1)
    out = ClipLoss()(x, x, torch.tensor(10.0), hard_weight=0.0, teacher_image_features=x, teacher_text_features=x)
    assert out["hard"].item() == pytest.approx(math.log(7), rel=1e-5)
    assert out["soft"].item() == pytest.approx(math.log(7), rel=1e-5)  # uniform teacher targets too


def test_identity_soft_targets_equal_hard():
    img, txt = _features(5, 6, 6), _features(5, 6, 7)
    eye = torch.eye(5, 6)
    out = ClipLoss(soft_temperature=1e-3)(img, txt, torch.tensor(4.0), hard_weight=0.5,
                                          teacher_image_features=eye, teacher_text_features=eye)
    torch.testing.assert_close(out["soft"], out["hard"])
    torch.testing.assert_close(out["loss"].detach(), out["hard"])


def test_hard_weight_one_with_teachers_reports_soft_but_trains_on_hard():
    img, txt = _features(4, 3, 8, grad=True), _features(4, 3, 9)
    out = ClipLoss()(img, txt, torch.tensor(2.0), teacher_image_features=txt, teacher_text_features=img.detach())
    assert "soft" in out and out["soft"].item() != pytest.approx(out["hard"].item())
    torch.testing.assert_close(out["loss"].detach(), out["hard"])


def test_autocast_bf16_inputs_computed_in_float32():
    img, txt = _features(4, 8, 10).bfloat16(), _features(4, 8, 11).bfloat16()
    s = torch.tensor(50.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ClipLoss()(img, txt, s)
    ref = ClipLoss()(img.float(), txt.float(), s)
    assert out["loss"].dtype == torch.float32
    torch.testing.assert_close(out["loss"], ref["loss"])


def test_errors_say_what_to_fix():
    x = _features(3, 4, 12)
    with pytest.raises(ValueError, match="teacher"):
        ClipLoss()(x, x, torch.tensor(1.0), hard_weight=0.5)
    with pytest.raises(ValueError, match="hard_weight"):
        ClipLoss()(x, x, torch.tensor(1.0), hard_weight=1.5)
    with pytest.raises(ValueError, match="both"):
        ClipLoss()(x, x, torch.tensor(1.0), teacher_image_features=x)
    with pytest.raises(ValueError, match="soft_temperature"):
        ClipLoss(soft_temperature=0.0)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        ClipLoss()(x, x[:2], torch.tensor(1.0))


def test_registered_and_buildable():
    loss = LOSSES.build({"name": "ClipLoss", "soft_temperature": 0.05, "gather": False})
    assert isinstance(loss, ClipLoss) and loss.soft_temperature == 0.05 and not loss.gather
