import pytest
import torch
import torch.nn.functional as F

from hirl_like.losses.siglip import SigLipLoss
from tests.losses._reference import dot, logsigmoid, softmax


def _features(b: int, d: int, seed: int, grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=-1).requires_grad_(grad)


def naive_siglip(img, txt, s, bias, hard_weight=1.0, t_img=None, t_txt=None, tau=0.1):
    b = img.shape[0]
    z = [[s * dot(img[i], txt[j]) + bias for j in range(b)] for i in range(b)]
    hard = -sum(logsigmoid((1.0 if i == j else -1.0) * z[i][j]) for i in range(b) for j in range(b)) / b
    if t_img is None:
        return hard, None
    i2t = [softmax([dot(t_img[i], t_txt[j]) / tau for j in range(b)]) for i in range(b)]  # image i over texts
    t2i = [softmax([dot(t_txt[j], t_img[i]) / tau for i in range(b)]) for j in range(b)]  # text j over images
    soft = 0.0
    for i in range(b):
        for j in range(b):
            q = (i2t[i][j] + t2i[j][i]) / 2
            soft = soft - (q * logsigmoid(z[i][j]) + (1 - q) * logsigmoid(-z[i][j]))
    soft = soft / b
    return hard_weight * hard + (1 - hard_weight) * soft, soft


def test_hard_matches_naive_loss_and_gradients():
    img, txt = _features(5, 4, 0, True), _features(5, 4, 1, True)
    s, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-3.0, requires_grad=True)
    out = SigLipLoss()(img, txt, s, bias)
    assert set(out) == {"loss", "hard", "logit_scale", "logit_bias"}
    ref, _ = naive_siglip(img, txt, s, bias)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(out["loss"], (img, txt, s, bias))
    rg = torch.autograd.grad(ref, (img, txt, s, bias))
    for a, b in zip(g, rg):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_soft_matches_naive():
    img, txt = _features(6, 4, 2, True), _features(6, 4, 3, True)
    t_img, t_txt = _features(6, 4, 4), _features(6, 4, 5)
    s, bias = torch.tensor(8.0), torch.tensor(-2.0)
    out = SigLipLoss(soft_temperature=0.3)(img, txt, s, bias, hard_weight=0.25,
                                           teacher_image_features=t_img, teacher_text_features=t_txt)
    ref, ref_soft = naive_siglip(img, txt, s, bias, 0.25, t_img, t_txt, tau=0.3)
    torch.testing.assert_close(out["soft"], ref_soft.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(out["loss"], (img, txt))
    rg = torch.autograd.grad(ref, (img, txt))
    for a, b in zip(g, rg):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_orthogonal_features_analytic_value():
    b, s, bias = 4, torch.tensor(10.0), torch.tensor(-10.0)
    x = torch.eye(b, 6)
    out = SigLipLoss()(x, x, s, bias)
    expected = -(F.logsigmoid(s + bias) + (b - 1) * F.logsigmoid(-bias))
    torch.testing.assert_close(out["loss"], expected)


def test_identity_targets_make_soft_equal_hard():
    img, txt = _features(5, 4, 6), _features(5, 4, 7)
    eye = torch.eye(5, 5)
    out = SigLipLoss(soft_temperature=1e-3)(img, txt, torch.tensor(10.0), torch.tensor(-10.0), hard_weight=0.0,
                                            teacher_image_features=eye, teacher_text_features=eye)
    torch.testing.assert_close(out["soft"], out["hard"])
    torch.testing.assert_close(out["loss"].detach(), out["hard"])


def test_soft_needs_teachers():
    x = _features(3, 4, 8)
    with pytest.raises(ValueError, match="teacher"):
        SigLipLoss()(x, x, torch.tensor(1.0), torch.tensor(0.0), hard_weight=0.9)
