"""Fixed 2-D sine-cosine position embeddings (MAE, He et al. 2022; `pos_embed.py` of the MAE code).

For a patch at row ``r`` and column ``c`` of an ``h x w`` grid and ``D = embed_dim``:

    omega_i = 1 / 10000^(i / (D/4)),  i = 0 .. D/4 - 1          (i.e. 1/10000^(2i/d) with d = D/2)
    e(p)    = [sin(p * omega_0..), cos(p * omega_0..)]           (D/2 channels for one coordinate)
    E(r, c) = [e(c), e(r)]                                        (D channels)

The first half of the channels encodes the COLUMN and the second half the ROW. This is the
channel order of the MAE reference (it builds its grid with ``np.meshgrid(grid_w, grid_h)`` and
feeds ``grid[0]``, the column index, to the first half), kept so that embeddings and checkpoints
line up with MAE's. Rows of the returned table follow the row-major patch order of a ViT
(index ``r * w + c``), preceded by an all-zero row for the CLS token when asked.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sincos_1d_pos_embed(embed_dim: int, positions: Tensor) -> Tensor:
    """1-D sin-cos table: ``positions`` (M,) -> (M, embed_dim) float64, ``[sin(p w), cos(p w)]``."""
    if embed_dim <= 0 or embed_dim % 2 != 0:
        raise ValueError(f"sincos_1d_pos_embed: embed_dim must be a positive even number, got {embed_dim}.")
    # float64 so the table is exact to float32 precision even for large positions / many channels.
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / (10000.0**omega)  # (D/2,)
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)  # (M, D/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d_pos_embed(embed_dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> Tensor:
    """MAE's fixed 2-D sin-cos position embeddings.

    Args:
        embed_dim: channels D; must be divisible by 4 (D/2 per coordinate, half sin half cos).
        grid_h, grid_w: patch grid size (rows, columns).
        cls_token: prepend an all-zero row for the CLS token (MAE does the same).

    Returns:
        float32 tensor of shape ``(int(cls_token) + grid_h * grid_w, embed_dim)``; row
        ``int(cls_token) + r * grid_w + c`` holds ``[e(c), e(r)]`` (see the module docstring).
    """
    if embed_dim <= 0 or embed_dim % 4 != 0:
        raise ValueError(
            f"sincos_2d_pos_embed: embed_dim must be a positive multiple of 4 (half the channels per "
            f"coordinate, half of those sin and half cos), got {embed_dim}."
        )
    if grid_h <= 0 or grid_w <= 0:
        raise ValueError(f"sincos_2d_pos_embed: grid sizes must be positive, got ({grid_h}, {grid_w}).")
    rows = torch.arange(grid_h).repeat_interleave(grid_w)  # r for index r * w + c
    cols = torch.arange(grid_w).repeat(grid_h)  # c for index r * w + c
    emb = torch.cat(
        [sincos_1d_pos_embed(embed_dim // 2, cols), sincos_1d_pos_embed(embed_dim // 2, rows)], dim=1
    )
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.to(torch.float32)
