"""Mask ratio sampling, BEiT/iBOT block-wise masks and MAE random masking."""

from __future__ import annotations

import random

import pytest
import torch

from hirl_like.data.masking import (
    BlockMaskGenerator,
    generate_block_masks,
    num_kept_patches,
    random_masking,
    sample_mask_ratio,
)


# --------------------------------------------------------------------------------- mask ratio draw
def test_ratio_distribution_ibot_default() -> None:
    rng = random.Random(0)
    ratios = [sample_mask_ratio([0, 0.3], [0, 0.2], rng) for _ in range(4000)]
    zeros = sum(r == 0 for r in ratios)
    assert 0.46 < zeros / len(ratios) < 0.54
    nonzero = [r for r in ratios if r != 0]
    assert min(nonzero) >= 0.1 and max(nonzero) <= 0.5
    assert abs(sum(nonzero) / len(nonzero) - 0.3) < 0.01  # mean of U(0.1, 0.5)
    # uniform: each fifth of (0.1, 0.5) holds about a fifth of the draws
    for k in range(5):
        lo = 0.1 + 0.08 * k
        share = sum(lo <= r < lo + 0.08 for r in nonzero) / len(nonzero)
        assert 0.16 < share < 0.24


def test_ratio_matches_naive_rule_and_scalars() -> None:
    rng_a, rng_b = random.Random(5), random.Random(5)
    for _ in range(50):
        got = sample_mask_ratio([0.2, 0.5], [0.1, 0.0], rng_a)
        cands = [rng_b.uniform(0.2 - 0.1, 0.2 + 0.1), 0.5]  # v > 0 draws, v == 0 does not
        assert got == rng_b.choice(cands)
    assert sample_mask_ratio(0.4, 0.0, random.Random(0)) == 0.4
    r = sample_mask_ratio(0.4, 0.1, random.Random(0))
    assert 0.3 <= r <= 0.5 and r != 0.4


@pytest.mark.parametrize(
    "ratio,var,match",
    [(0.1, 0.2, "pred_ratio >= pred_ratio_var"), (0.3, -0.1, ">= 0"), ([0.1, 0.2], [0.0], "same length"),
     (0.9, 0.2, "<= 1")],
)
def test_ratio_validation(ratio, var, match) -> None:
    with pytest.raises(ValueError, match=match):
        sample_mask_ratio(ratio, var, random.Random(0))


# ------------------------------------------------------------------------------------- block masks
class _BlockLog(BlockMaskGenerator):
    """Records, for every accepted block, the mask before and after it and the patches still to mask."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.steps: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def _add_block(self, mask, max_new, rng):
        before = mask.clone()
        new = super()._add_block(mask, max_new, rng)
        if new:
            self.steps.append((before, mask.clone(), max_new))
        return new


@pytest.mark.parametrize("grid", [(14, 14), (8, 8), (6, 10)])
def test_every_accepted_block_is_one_rectangle_within_the_budget(grid) -> None:
    """The algorithm's definition, checked from outside: each step ORs one axis-aligned rectangle
    into the mask (its bounding box of new patches is then fully masked and strictly smaller than
    the grid), adds at most the patches still to mask, and the mask is the union of those steps."""
    h, w = grid
    for seed in range(40):
        gen = _BlockLog(grid)
        target = random.Random(1000 + seed).randint(0, h * w // 2)
        mask = gen(target, random.Random(seed))
        assert int(mask.sum()) <= target
        union = torch.zeros(h, w, dtype=torch.bool)
        for before, after, remaining in gen.steps:
            added = after & ~before
            assert torch.equal(after & before, before)  # nothing is ever unmasked
            assert 0 < int(added.sum()) <= remaining
            rows, cols = added.any(1).nonzero().flatten(), added.any(0).nonzero().flatten()
            top, bottom, left, right = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
            assert bottom - top < h and right - left < w
            assert after[top:bottom, left:right].all()  # the new patches lie in one filled rectangle
            union |= added
        assert torch.equal(union, mask)


def test_default_min_block_area_and_small_grids() -> None:
    assert BlockMaskGenerator(14).min_num_patches == 16
    assert BlockMaskGenerator(8).min_num_patches == 4  # 32-px image, 4-px patches
    assert BlockMaskGenerator(4).min_num_patches == 1
    assert BlockMaskGenerator(2).min_num_patches == 1  # (2 // 3)^2 = 0 raised to 1
    assert BlockMaskGenerator((3, 12)).min_num_patches == 1
    with pytest.raises(ValueError, match="min_num_patches"):
        BlockMaskGenerator(4, min_num_patches=16)  # a 4x4 grid holds at most a 3x3 block
    with pytest.raises(ValueError, match=">= 2"):
        BlockMaskGenerator((1, 8))
    # a 2x2 grid can still be masked (1x1 blocks)
    assert BlockMaskGenerator(2)(1, random.Random(0)).sum() == 1


def test_block_mask_count_never_exceeds_and_mostly_exact() -> None:
    for grid, min_exact in ((14, 0.55), (8, 0.85)):
        gen = BlockMaskGenerator(grid)
        rng = random.Random(0)
        exact, shortfall = 0, 0
        n = 300
        for _ in range(n):
            target = int(rng.uniform(0.1, 0.5) * grid * grid)
            got = int(gen(target, rng).sum())
            assert got <= target
            exact += got == target
            shortfall += target - got
        assert exact / n > min_exact
        assert shortfall / n < 1.5
    assert BlockMaskGenerator(14)(0, random.Random(0)).sum() == 0


class _Recording(BlockMaskGenerator):
    """Records (block size, patches still to mask) for every accepted block."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.accepted: list[tuple[tuple[int, int], int]] = []

    def _sample_block(self, max_new, rng):
        self._last = super()._sample_block(max_new, rng)
        return self._last

    def _add_block(self, mask, max_new, rng):
        new = super()._add_block(mask, max_new, rng)
        if new:
            self.accepted.append((self._last, max_new))
        return new


def test_single_block_is_a_rectangle_of_at_least_min_area() -> None:
    gen = _Recording(14)
    hits = 0
    for seed in range(60):
        mask = gen(16, random.Random(seed))  # target == min area: one block of exactly 16 or nothing
        if mask.any():
            hits += 1
            rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert int(mask.sum()) == int(box) == 16  # a single filled rectangle
    assert hits > 40


def test_main_phase_blocks_respect_min_area() -> None:
    gen = _Recording(14)
    rng = random.Random(1)
    for _ in range(100):
        gen(int(rng.uniform(0.1, 0.5) * 196), rng)
    main = [(bh, bw) for (bh, bw), remaining in gen.accepted if remaining >= 16]
    assert len(main) > 100
    assert all(bh * bw >= 16 for bh, bw in main)
    aspects = [bh / bw for bh, bw in main]
    assert min(aspects) < 0.6 and max(aspects) > 1.7  # both orientations occur


def test_generate_block_masks_batch_and_determinism() -> None:
    masks = generate_block_masks(64, 14, [0, 0.3], [0, 0.2], random.Random(0))
    assert masks.shape == (64, 196) and masks.dtype == torch.bool
    counts = masks.sum(1)
    zeros = int((counts == 0).sum())
    assert 16 < zeros < 48
    nz = counts[counts > 0]
    assert nz.max() <= int(0.5 * 196) and nz.min() >= int(0.1 * 196) - 16
    again = generate_block_masks(64, 14, [0, 0.3], [0, 0.2], random.Random(0))
    assert torch.equal(masks, again)
    assert not torch.equal(masks, generate_block_masks(64, 14, [0, 0.3], [0, 0.2], random.Random(1)))
    # row-major layout of an (h, w) mask for non-square grids
    rect = generate_block_masks(4, (6, 10), 0.4, 0.0, random.Random(2))
    ref_rng = random.Random(2)
    gen = BlockMaskGenerator((6, 10))
    for i in range(4):
        sample_mask_ratio(0.4, 0.0, ref_rng)
        assert torch.equal(rect[i], gen(24, ref_rng).flatten())


def test_no_global_rng_use() -> None:
    random.seed(123)
    torch.manual_seed(123)
    py_state, torch_state = random.getstate(), torch.get_rng_state()
    generate_block_masks(8, 14, [0, 0.3], [0, 0.2], random.Random(0))
    random_masking(4, 16, 0.75, generator=torch.Generator().manual_seed(0))
    assert random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)


# ---------------------------------------------------------------------------------- random masking
def test_random_masking_keeps_exactly_k_and_inverts() -> None:
    b, n = 5, 196
    ids_keep, mask, ids_restore = random_masking(b, n, 0.75, generator=torch.Generator().manual_seed(0))
    k = 49  # 196 * 0.25
    assert ids_keep.shape == (b, k) and ids_keep.dtype == torch.long
    assert mask.shape == (b, n) and mask.dtype == torch.bool
    assert torch.equal(mask.sum(1), torch.full((b,), n - k))
    for i in range(b):
        assert sorted(ids_restore[i].tolist()) == list(range(n))  # a permutation
        assert not mask[i, ids_keep[i]].any()
        assert len(set(ids_keep[i].tolist())) == k
        for t in range(k):
            assert int(ids_restore[i, ids_keep[i, t]]) == t  # kept token t sits at shuffled slot t
        assert torch.equal(mask[i], ids_restore[i] >= k)
    assert len({tuple(m.tolist()) for m in mask}) == b  # every image has its own mask


def test_random_masking_matches_naive_argsort() -> None:
    b, n, ratio = 3, 10, 0.6
    ids_keep, mask, ids_restore = random_masking(b, n, ratio, generator=torch.Generator().manual_seed(7))
    noise = torch.rand(b, n, generator=torch.Generator().manual_seed(7))
    for i in range(b):
        order = sorted(range(n), key=lambda j: float(noise[i, j]))  # ascending noise = kept first
        assert ids_keep[i].tolist() == order[:4]
        assert [bool(v) for v in mask[i]] == [j not in order[:4] for j in range(n)]
        assert ids_restore[i].tolist() == [order.index(j) for j in range(n)]


def test_random_masking_determinism_and_validation() -> None:
    a = random_masking(4, 16, 0.5, generator=torch.Generator().manual_seed(3), device="cpu")
    c = random_masking(4, 16, 0.5, generator=torch.Generator().manual_seed(3))
    d = random_masking(4, 16, 0.5, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, c))
    assert not torch.equal(a[1], d[1])
    assert num_kept_patches(10, 0.9) == 1  # 10 * (1 - 0.9) = 0.999..., not 0
    assert num_kept_patches(64, 0.75) == 16
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        random_masking(2, 16, 1.0)
    with pytest.raises(ValueError, match="keeps no patch"):
        random_masking(2, 4, 0.9)
