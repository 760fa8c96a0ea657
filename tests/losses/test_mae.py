import pytest
import torch

from hirl_like.losses.mae import MAELoss, patchify


def test_patchify_order_matches_explicit_loops():
    gen = torch.Generator().manual_seed(0)
    b, c, h, w, p = 2, 3, 4, 6, 2
    img = torch.randn(b, c, h, w, generator=gen)
    out = patchify(img, p)
    assert out.shape == (b, (h // p) * (w // p), p * p * c)
    for n in range(b):
        for hp in range(h // p):
            for wp in range(w // p):
                for i in range(p):
                    for j in range(p):
                        for ch in range(c):
                            assert out[n, hp * (w // p) + wp, (i * p + j) * c + ch] == img[n, ch, hp * p + i, wp * p + j]


def test_patchify_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.zeros(1, 3, 5, 4), 2)


def naive_mae(pred, img, mask, p, norm, eps=1e-6):
    target = patchify(img, p)
    num, den = 0.0, 0.0
    for n in range(pred.shape[0]):
        for k in range(pred.shape[1]):
            x = target[n, k]
            if norm:
                d = x.shape[0]
                mean = sum(x[i] for i in range(d)) / d
                var = sum((x[i] - mean) ** 2 for i in range(d)) / (d - 1)  # unbiased, as MAE's .var()
                x = (x - mean) / (var + eps) ** 0.5
            err = sum((pred[n, k, i] - x[i]) ** 2 for i in range(x.shape[0])) / x.shape[0]
            num = num + mask[n, k] * err
            den = den + mask[n, k]
    return num / den


@pytest.mark.parametrize("norm", [True, False])
def test_matches_naive(norm):
    gen = torch.Generator().manual_seed(1)
    img = torch.randn(2, 3, 4, 4, generator=gen)
    pred = torch.randn(2, 4, 12, generator=gen, requires_grad=True)
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0]], dtype=torch.float32)
    out = MAELoss(patch_size=2, norm_pix_loss=norm)(pred, img, mask.bool())
    ref = naive_mae(pred, img, mask, 2, norm)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(out["loss"], pred)[0], torch.autograd.grad(ref, pred)[0])


def test_perfect_prediction_gives_zero_and_only_masked_patches_count():
    gen = torch.Generator().manual_seed(2)
    img = torch.rand(2, 3, 8, 8, generator=gen)
    loss_fn = MAELoss(patch_size=4)
    pred = loss_fn.target(img).clone()
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[:, :2] = True
    pred[~mask] = 100.0  # visible patches are not scored
    assert loss_fn(pred, img, mask)["loss"].item() == pytest.approx(0.0, abs=1e-10)


def test_empty_mask_gives_zero_with_gradient():
    pred = torch.randn(1, 4, 12, requires_grad=True)
    out = MAELoss(patch_size=2)(pred, torch.randn(1, 3, 4, 4), torch.zeros(1, 4))
    out["loss"].backward()
    assert out["loss"].item() == 0.0 and pred.grad is not None


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="patch_size"):
        MAELoss(patch_size=4)(torch.zeros(1, 4, 12), torch.zeros(1, 3, 4, 4), torch.zeros(1, 4))
