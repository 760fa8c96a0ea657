"""Mask generators: iBOT/BEiT block-wise masks and MAE random token dropping.

Every function takes its random source explicitly (``random.Random`` or ``torch.Generator``) and
never touches the global RNGs, so masks are reproducible per worker and across resumes.

Block-wise masking (BEiT, Bao et al. 2022; iBOT, Zhou et al. 2022): per image, draw a ratio r
(``sample_mask_ratio``), then mask ``int(r * h * w)`` patches as a union of random rectangles:

    repeat:                                    remaining = target - masked
        up to 10 attempts:
            area   ~ U(min_num_patches, remaining)
            aspect ~ exp(U(log min_aspect, log max_aspect))
            (bh, bw) = (round(sqrt(area * aspect)), round(sqrt(area / aspect)))
            place it at a uniform position if bh < h and bw < w;
            accept if it adds 0 < new <= remaining patches
        stop when nothing was accepted in 10 attempts or the target is reached

MAE random masking (He et al. 2022): per-image uniform noise, argsort, keep the first
``K = floor(N * (1 - mask_ratio))``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
from torch import Tensor

_ATTEMPTS_PER_BLOCK = 10  # BEiT/iBOT


def _as_grid(grid_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(grid_size, int):
        h = w = grid_size
    else:
        if len(grid_size) != 2:
            raise ValueError(f"grid_size must be an int or (h, w), got {grid_size!r}.")
        h, w = int(grid_size[0]), int(grid_size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"grid_size must be positive, got {grid_size!r}.")
    return h, w


def _as_pairs(
    pred_ratio: float | Sequence[float], pred_ratio_var: float | Sequence[float]
) -> list[tuple[float, float]]:
    """Validated (mean, var) pairs; a scalar var is shared by every mean."""
    means = [float(pred_ratio)] if isinstance(pred_ratio, (int, float)) else [float(m) for m in pred_ratio]
    if isinstance(pred_ratio_var, (int, float)):
        variances = [float(pred_ratio_var)] * len(means)
    else:
        variances = [float(v) for v in pred_ratio_var]
    if not means:
        raise ValueError("pred_ratio must hold at least one value.")
    if len(means) != len(variances):
        raise ValueError(
            f"pred_ratio ({means}) and pred_ratio_var ({variances}) must have the same length."
        )
    for m, v in zip(means, variances):
        if not m >= v >= 0:
            raise ValueError(
                f"mask ratio pairs need pred_ratio >= pred_ratio_var >= 0 (the ratio is drawn from "
                f"U(m - v, m + v)); got m={m}, v={v}."
            )
        if m + v > 1:
            raise ValueError(f"pred_ratio + pred_ratio_var must be <= 1 (a fraction of patches); got m={m}, v={v}.")
    return list(zip(means, variances))


def sample_mask_ratio(
    pred_ratio: float | Sequence[float], pred_ratio_var: float | Sequence[float], rng: random.Random
) -> float:
    """iBOT's per-image mask ratio.

    For each pair (m_i, v_i) draw r_i ~ U(m_i - v_i, m_i + v_i) (r_i = m_i when v_i == 0), then
    return one r_i chosen uniformly. ``pred_ratio=[0, 0.3], pred_ratio_var=[0, 0.2]`` gives 0 or
    U(0.1, 0.5), each half of the time. Scalars act as one-element lists.
    """
    pairs = _as_pairs(pred_ratio, pred_ratio_var)
    # Draw every candidate before choosing (as iBOT does) so the RNG stream does not depend on
    # which candidate wins.
    candidates = [rng.uniform(m - v, m + v) if v > 0 else m for m, v in pairs]
    return candidates[0] if len(candidates) == 1 else rng.choice(candidates)


class BlockMaskGenerator:
    """BEiT/iBOT block-wise mask generator on an ``h x w`` patch grid.

    Args:
        grid_size: int or (h, w); both sides must be >= 2 (a block is strictly smaller than the
            grid in each direction, as in BEiT/iBOT).
        min_aspect: smallest block aspect ratio (height / width); default 0.3.
        max_aspect: largest aspect; default ``1 / min_aspect``. Aspects are log-uniform.
        min_num_patches: smallest block area. Default ``(min(h, w) // 3) ** 2`` (iBOT: 16 on
            14x14, 4 on an 8x8 grid of 32-px images with 4-px patches), raised to at least 1 and
            clamped to ``(min(h, w) - 1) ** 2``, the largest square block that fits, so that tiny
            grids still get masks. An explicit value above that bound is an error.

    Block areas: every block placed while at least ``min_num_patches`` patches remain to be
    masked has area ``>= min_num_patches`` (iBOT's rounding of the sides can shrink such a block,
    e.g. 16 -> 2x7 = 14; those are rejected here, which leaves the mask statistics unchanged).
    Once fewer remain, the area is drawn from U(remaining, min) as in BEiT/iBOT, and small top-up
    blocks are allowed: they are what brings the count to the target.

    Count: never above the target. As in BEiT/iBOT it can fall a few patches short, when 10
    consecutive attempts cannot add a block (then the algorithm stops). On 14x14 with ratios
    U(0.1, 0.5) about two thirds of masks are exact and the mean shortfall is ~0.6 patch; on 8x8
    ~95% are exact. Losses must therefore count the masked patches of each image, not assume them.
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int],
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        min_num_patches: int | None = None,
    ) -> None:
        self.height, self.width = _as_grid(grid_size)
        if self.height < 2 or self.width < 2:
            raise ValueError(
                f"BlockMaskGenerator: both grid sides must be >= 2 (blocks are strictly smaller than "
                f"the grid), got {(self.height, self.width)}."
            )
        if min_aspect <= 0:
            raise ValueError(f"BlockMaskGenerator: min_aspect must be > 0, got {min_aspect}.")
        max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
        if max_aspect < min_aspect:
            raise ValueError(f"BlockMaskGenerator: max_aspect ({max_aspect}) must be >= min_aspect ({min_aspect}).")
        largest_square = (min(self.height, self.width) - 1) ** 2
        if min_num_patches is None:
            min_num_patches = min(max(1, (min(self.height, self.width) // 3) ** 2), largest_square)
        elif not 1 <= min_num_patches <= largest_square:
            raise ValueError(
                f"BlockMaskGenerator: min_num_patches must be in [1, {largest_square}] on a "
                f"{self.height}x{self.width} grid (the largest block that fits), got {min_num_patches}."
            )
        self.min_num_patches = int(min_num_patches)
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    def _sample_block(self, max_new: int, rng: random.Random) -> tuple[int, int] | None:
        """Block size (bh, bw) for one attempt, or None when it cannot be placed."""
        # When max_new < min this is U(max_new, min) (random.uniform accepts reversed bounds);
        # such a block can still be accepted by overlapping already-masked patches.
        area = rng.uniform(self.min_num_patches, max_new)
        aspect = math.exp(rng.uniform(*self.log_aspect))
        bh = int(round(math.sqrt(area * aspect)))
        bw = int(round(math.sqrt(area / aspect)))
        if not (bh < self.height and bw < self.width):
            return None
        if max_new >= self.min_num_patches and bh * bw < self.min_num_patches:
            # Rounding of the sides shrank a main-phase block below the minimum (e.g. 16 -> 2x7);
            # reject it so the paper's minimum block area holds (see the class docstring).
            return None
        return bh, bw

    def _add_block(self, mask: Tensor, max_new: int, rng: random.Random) -> int:
        """Try up to 10 blocks; mask the first that adds 0 < new <= max_new patches. Returns new."""
        for _ in range(_ATTEMPTS_PER_BLOCK):
            size = self._sample_block(max_new, rng)
            if size is None:
                continue
            bh, bw = size
            top = rng.randint(0, self.height - bh)
            left = rng.randint(0, self.width - bw)
            window = mask[top : top + bh, left : left + bw]
            new = bh * bw - int(window.sum())
            if 0 < new <= max_new:
                window.fill_(True)
                return new
        return 0

    def __call__(self, num_masking_patches: int, rng: random.Random) -> Tensor:
        """A (h, w) bool mask, True = masked, with at most ``num_masking_patches`` True entries."""
        if not 0 <= num_masking_patches <= self.num_patches:
            raise ValueError(
                f"BlockMaskGenerator: num_masking_patches must be in [0, {self.num_patches}], got {num_masking_patches}."
            )
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < num_masking_patches:
            new = self._add_block(mask, num_masking_patches - count, rng)
            if new == 0:
                break
            count += new
        return mask

    def __repr__(self) -> str:
        lo, hi = (math.exp(a) for a in self.log_aspect)
        return (
            f"BlockMaskGenerator(grid=({self.height}, {self.width}), min_num_patches={self.min_num_patches}, "
            f"aspect=({lo:.3g}, {hi:.3g}))"
        )


def generate_block_masks(
    batch_size: int,
    grid_size: int | Sequence[int],
    pred_ratio: float | Sequence[float],
    pred_ratio_var: float | Sequence[float],
    rng: random.Random,
    min_aspect: float = 0.3,
) -> Tensor:
    """Block-wise masks for a batch: (batch_size, h * w) bool, True = masked, row-major patch order.

    Each image draws its own ratio r with ``sample_mask_ratio`` and gets ``int(r * h * w)``
    patches masked (fewer when the block algorithm stops early; see ``BlockMaskGenerator``).
    """
    if batch_size < 0:
        raise ValueError(f"generate_block_masks: batch_size must be >= 0, got {batch_size}.")
    h, w = _as_grid(grid_size)
    _as_pairs(pred_ratio, pred_ratio_var)  # validate even when batch_size == 0
    generator = BlockMaskGenerator((h, w), min_aspect=min_aspect)
    masks = torch.zeros(batch_size, h * w, dtype=torch.bool)
    for i in range(batch_size):
        ratio = sample_mask_ratio(pred_ratio, pred_ratio_var, rng)
        masks[i] = generator(int(ratio * h * w), rng).flatten()
    return masks


def num_kept_patches(num_patches: int, mask_ratio: float) -> int:
    """K = floor(N * (1 - mask_ratio)) as MAE, robust to float error (0.1 * 10 -> 1, not 0)."""
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
    if num_patches <= 0:
        raise ValueError(f"num_patches must be positive, got {num_patches}.")
    # The small epsilon absorbs float error such as 10 * (1 - 0.9) = 0.9999999999999998.
    keep = int(math.floor(num_patches * (1.0 - mask_ratio) + 1e-9))
    if keep < 1:
        raise ValueError(
            f"mask_ratio={mask_ratio} keeps no patch of {num_patches}; lower the ratio so that "
            f"N * (1 - ratio) >= 1."
        )
    return keep


def attentive_keep(attention: Tensor, mask_ratio: float) -> Tensor:
    """(B, N) patch attention -> (B, K) long indices of the K most attended patches of each image,
    ascending, K = ``num_kept_patches(N, mask_ratio)``: the attentive masking of the image given to
    CLIP (Yang et al. 2023, cited in Harmony's Appendix D) drops the least attended patches."""
    if attention.dim() != 2:
        raise ValueError(f"attention must be (B, N), got shape {tuple(attention.shape)}.")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}.")
    k = num_kept_patches(attention.shape[1], mask_ratio)
    return attention.topk(k, dim=1).indices.sort(dim=1).values


def random_masking(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-image random masking by noise argsort.

    Returns:
        ids_keep: (B, K) long, indices of the kept patches (in shuffled order, K = floor(N(1-r))).
        mask: (B, N) bool, True = removed, in the original patch order.
        ids_restore: (B, N) long, the inverse of the shuffle: position j of the full sequence is
            element ``ids_restore[b, j]`` of ``[kept..., removed...]``.
    """
    if batch_size < 0:
        raise ValueError(f"random_masking: batch_size must be >= 0, got {batch_size}.")
    keep = num_kept_patches(num_patches, mask_ratio)
    # Draw on the generator's device (torch.rand requires it), then move.
    noise_device = generator.device if generator is not None else (device if device is not None else "cpu")
    noise = torch.rand(batch_size, num_patches, generator=generator, device=noise_device)
    if device is not None:
        noise = noise.to(device)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise = kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = ids_restore >= keep  # shuffled position >= K <=> removed
    return ids_keep, mask, ids_restore
