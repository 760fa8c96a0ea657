import math

import pytest
import torch

from hirl_like.losses.distill_ce import (
    centered_sharpened_ce,
    cross_view_ce,
    ema_update_center_,
    masked_mean_ce,
)
from tests.losses._reference import row, soft_ce, softmax


def naive_ce(s, t, c, ts, tt):
    """One row: -sum softmax((t - c)/tt) * log_softmax(s/ts)."""
    target = softmax([(t[k] - c[k]) / tt for k in range(t.shape[0])])
    return soft_ce(target, [x / ts for x in row(s)])


def test_centered_sharpened_ce_matches_naive_rows():
    g = torch.Generator().manual_seed(0)
    s, t, c = torch.randn(3, 2, 5, generator=g), torch.randn(3, 2, 5, generator=g), torch.randn(1, 1, 5, generator=g)
    out = centered_sharpened_ce(s, t, c, 0.1, 0.04)
    assert out.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            assert out[i, j].item() == pytest.approx(naive_ce(s[i, j], t[i, j], c[0, 0], 0.1, 0.04).item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("g_views,v_views", [(2, 2), (2, 5), (1, 3)])
def test_cross_view_ce_equals_pair_loop(g_views, v_views):
    b, k = 3, 6
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(v_views * b, k, generator=gen, requires_grad=True)
    t = torch.randn(g_views * b, k, generator=gen)
    c = torch.randn(1, k, generator=gen)
    total, pairs = 0.0, 0
    for q in range(g_views):
        for v in range(v_views):
            if v == q:
                continue
            total = total + sum(naive_ce(s[v * b + i], t[q * b + i], c[0], 0.1, 0.05) for i in range(b)) / b
            pairs += 1
    ref = total / pairs
    out = cross_view_ce(s, t, c, g_views, 0.1, 0.05)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(out, s)[0], torch.autograd.grad(ref, s)[0], rtol=1e-4, atol=1e-6)


def test_cross_view_ce_needs_two_views():
    with pytest.raises(ValueError, match="two views"):
        cross_view_ce(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(1, 4), 1, 0.1, 0.04)


def _masked_case(seed: int):
    """Student (3, 4, 5) with grad, teacher, centre, and a mask with an item that has nothing masked."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(3, 4, 5, generator=gen, requires_grad=True)
    t = torch.randn(3, 4, 5, generator=gen)
    c = torch.randn(1, 1, 5, generator=gen)
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    return s, t, c, mask


def test_masked_mean_ce_per_item_normalisation():
    s, t, c, mask = _masked_case(2)
    ref = 0.0
    for m in range(3):
        n = int(mask[m].sum())
        item = sum((naive_ce(s[m, j], t[m, j], c[0, 0], 0.1, 0.07) for j in range(4) if mask[m, j]), 0.0)
        ref = ref + item / max(n, 1)
    ref = ref / 3  # the item with nothing masked still counts
    out = masked_mean_ce(s, t, c, mask, 0.1, 0.07)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(out, s)[0], torch.autograd.grad(ref, s)[0], rtol=1e-4, atol=1e-6)


def test_masked_mean_ce_on_preselected_student_rows_equals_the_full_tensor():
    """Objectives run the student head on masked tokens only and pass (#masked, K) rows."""
    s, t, c, mask = _masked_case(3)
    full = masked_mean_ce(s, t, c, mask, 0.1, 0.07)
    rows = masked_mean_ce(s[mask], t, c, mask, 0.1, 0.07)
    torch.testing.assert_close(rows, full)
    torch.testing.assert_close(torch.autograd.grad(rows, s)[0], torch.autograd.grad(full, s)[0])
    with pytest.raises(ValueError, match="selected student rows"):
        masked_mean_ce(s[mask][:-1], t, c, mask, 0.1, 0.07)


def test_masked_mean_ce_with_nothing_masked_is_zero_and_differentiable():
    s = torch.randn(2, 3, 4, requires_grad=True)
    out = masked_mean_ce(s, torch.randn(2, 3, 4), torch.zeros(1, 1, 4), torch.zeros(2, 3, dtype=torch.bool), 0.1, 0.04)
    out.backward()
    assert out.item() == 0.0 and s.grad is not None and s.grad.abs().sum() == 0


def test_uniform_inputs_give_log_k():
    k = 7
    out = centered_sharpened_ce(torch.zeros(2, k), torch.zeros(2, k), torch.zeros(1, k), 0.1, 0.04)
    torch.testing.assert_close(out, torch.full((2,), math.log(k)))


def test_center_update_uses_raw_outputs_and_momentum():
    center = torch.full((1, 3), 2.0)
    t = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    ema_update_center_(center, t, 0.9)
    torch.testing.assert_close(center, 0.9 * 2.0 + 0.1 * torch.tensor([[2.0, 3.0, 4.0]]))


def test_center_update_counts_selected_rows_only():
    center = torch.zeros(1, 1, 2)
    t = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [float("inf"), float("nan")]]])  # last = padding
    select = torch.tensor([[True, True, False]])
    ema_update_center_(center, t, 0.5, select=select)
    torch.testing.assert_close(center, torch.tensor([[[1.0, 1.5]]]))


def test_center_unchanged_when_nothing_selected():
    center = torch.tensor([[1.0, -1.0]])
    ema_update_center_(center, torch.randn(2, 3, 2), 0.9, select=torch.zeros(2, 3, dtype=torch.bool))
    torch.testing.assert_close(center, torch.tensor([[1.0, -1.0]]))
