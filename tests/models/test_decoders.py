"""2-D sin-cos position embeddings, MAEDecoder and MLMDecoder."""

from __future__ import annotations

import math

import pytest
import torch

from hirl_like.data.masking import random_masking
from hirl_like.models.decoders import MAEDecoder, MLMDecoder
from hirl_like.models.pos_embed import sincos_2d_pos_embed
from hirl_like.registry import MODELS


# ------------------------------------------------------------------------------------ sin-cos table
def _naive_sincos(d: int, gh: int, gw: int) -> torch.Tensor:
    """Loop version: first half encodes the column, second half the row (MAE's channel order)."""
    q = d // 4
    out = torch.zeros(gh * gw, d, dtype=torch.float64)
    for r in range(gh):
        for c in range(gw):
            for i in range(q):
                omega = 1.0 / 10000 ** (2 * i / (d / 2))
                out[r * gw + c, i] = math.sin(c * omega)
                out[r * gw + c, q + i] = math.cos(c * omega)
                out[r * gw + c, 2 * q + i] = math.sin(r * omega)
                out[r * gw + c, 3 * q + i] = math.cos(r * omega)
    return out.float()


@pytest.mark.parametrize("d,gh,gw", [(8, 3, 3), (16, 2, 5), (32, 4, 3)])
def test_sincos_matches_loop_formula(d: int, gh: int, gw: int) -> None:
    emb = sincos_2d_pos_embed(d, gh, gw)
    assert emb.shape == (gh * gw, d) and emb.dtype == torch.float32
    torch.testing.assert_close(emb, _naive_sincos(d, gh, gw))


def test_sincos_cls_row_and_analytic_values() -> None:
    emb = sincos_2d_pos_embed(8, 2, 3, cls_token=True)
    assert emb.shape == (7, 8)
    assert torch.all(emb[0] == 0)
    # patch (0, 0): sin 0 = 0, cos 0 = 1 in both halves
    torch.testing.assert_close(emb[1], torch.tensor([0, 0, 1, 1, 0, 0, 1, 1.0]))
    # patch (r=1, c=2), D=8: omegas (1, 1/100)
    expected = torch.tensor(
        [math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02), math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]
    )
    torch.testing.assert_close(emb[1 + 1 * 3 + 2], expected)


def test_sincos_rows_distinct_and_validation() -> None:
    emb = sincos_2d_pos_embed(16, 7, 7)
    dist = torch.cdist(emb, emb)
    assert dist[~torch.eye(49, dtype=torch.bool)].min() > 1e-3
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d_pos_embed(6, 2, 2)


# --------------------------------------------------------------------------------------- MAEDecoder
def _mae(depth: int = 2, grid=(3, 4)) -> MAEDecoder:
    torch.manual_seed(0)
    return MAEDecoder(grid_size=grid, encoder_dim=10, patch_size=2, in_chans=3, embed_dim=16, depth=depth, num_heads=4).eval()


def _masked_inputs(dec: MAEDecoder, batch: int = 2, ratio: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids_keep, mask, ids_restore = random_masking(batch, dec.num_patches, ratio, generator=g)
    tokens = torch.randn(batch, 1 + ids_keep.shape[1], dec.encoder_dim, generator=g)
    return tokens, ids_keep, mask, ids_restore


def test_mae_decoder_shape_and_registry() -> None:
    dec = _mae()
    tokens, _, _, ids_restore = _masked_inputs(dec)
    assert dec(tokens, ids_restore).shape == (2, 12, 2 * 2 * 3)
    built = MODELS.build({"name": "MAEDecoder", "grid_size": 2, "encoder_dim": 8, "patch_size": 4,
                          "embed_dim": 8, "depth": 1, "num_heads": 2})
    assert built(torch.randn(1, 3, 8), torch.tensor([[0, 2, 1, 3]])).shape == (1, 4, 48)


def test_mae_position_table_is_fixed_nonzero_buffer() -> None:
    dec = _mae()
    names = dict(dec.named_parameters())
    assert "pos_embed" not in names and all(p is not dec.pos_embed for p in dec.parameters())
    assert "pos_embed" in dict(dec.named_buffers())
    assert not dec.pos_embed.requires_grad
    assert dec.pos_embed.abs().sum() > 0
    torch.testing.assert_close(dec.pos_embed[0], sincos_2d_pos_embed(16, 3, 4, cls_token=True))
    assert "pos_embed" not in dec.state_dict()  # recomputed from the config, never loaded


def test_masked_patches_get_different_predictions() -> None:
    dec = _mae()
    tokens, _, mask, ids_restore = _masked_inputs(dec, batch=1)
    out = dec(tokens, ids_restore)[0]
    masked = out[mask[0]]
    assert masked.shape[0] >= 2
    for i in range(masked.shape[0]):
        for j in range(i + 1, masked.shape[0]):
            assert (masked[i] - masked[j]).abs().max() > 1e-4
    # Control (the public Harmony defect): with a zero position table they are all identical.
    dec.pos_embed.zero_()
    masked_zero = dec(tokens, ids_restore)[0][mask[0]]
    torch.testing.assert_close(masked_zero, masked_zero[:1].expand_as(masked_zero))


def test_mae_decoder_matches_naive_unshuffle() -> None:
    """Reference forward: place tokens by explicit loops over ids_restore, then the same blocks."""
    dec = _mae(depth=2)
    tokens, ids_keep, mask, ids_restore = _masked_inputs(dec, batch=3, ratio=0.75, seed=3)
    b, k = ids_keep.shape
    n = dec.num_patches
    emb = dec.decoder_embed(tokens)
    full = torch.zeros(b, 1 + n, dec.embed_dim)
    for i in range(b):
        full[i, 0] = emb[i, 0]
        for j in range(n):
            src = int(ids_restore[i, j])
            full[i, 1 + j] = emb[i, 1 + src] if src < k else dec.mask_token[0, 0]
    x = full + dec.pos_embed
    for blk in dec.blocks:
        x = blk(x)
    expected = dec.pred(dec.norm(x))[:, 1:]
    torch.testing.assert_close(dec(tokens, ids_restore), expected, rtol=1e-5, atol=1e-5)
    # sanity of the construction: kept patch ids_keep[i, t] lands at full position ids_keep[i, t]
    for i in range(b):
        for t in range(k):
            assert int(ids_restore[i, ids_keep[i, t]]) == t and not mask[i, ids_keep[i, t]]


def test_mae_kept_patch_prediction_follows_its_position() -> None:
    """Depth 0: a visible patch's prediction depends only on its own token and position, so the
    masked run must agree with an unmasked run (identity order) at every kept position."""
    dec = _mae(depth=0)
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, dec.num_patches, dec.encoder_dim, generator=g)  # one token per patch
    cls = torch.randn(2, 1, dec.encoder_dim, generator=g)
    ids_keep, mask, ids_restore = random_masking(2, dec.num_patches, 0.5, generator=g)
    visible = torch.gather(feats, 1, ids_keep[..., None].expand(-1, -1, dec.encoder_dim))
    out_masked = dec(torch.cat([cls, visible], 1), ids_restore)
    identity = torch.arange(dec.num_patches).expand(2, -1)
    out_full = dec(torch.cat([cls, feats], 1), identity)
    torch.testing.assert_close(out_masked[~mask], out_full[~mask])
    assert not torch.allclose(out_masked[mask], out_full[mask])


def test_mae_decoder_validation() -> None:
    dec = _mae()
    with pytest.raises(ValueError, match="ids_restore"):
        dec(torch.randn(2, 4, 10), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="num_heads"):
        MAEDecoder(grid_size=2, encoder_dim=8, patch_size=2, embed_dim=12, num_heads=5)


# --------------------------------------------------------------------------------------- MLMDecoder
def _mlm(input_dim: int = 12) -> MLMDecoder:
    torch.manual_seed(0)
    return MLMDecoder(input_dim=input_dim, width=16, depth=2, num_heads=4, vocab_size=30, context_length=9).eval()


def test_mlm_shape_and_projection() -> None:
    dec = _mlm()
    assert dec(torch.randn(2, 9, 12)).shape == (2, 9, 30)
    assert dec(torch.randn(2, 5, 12), torch.zeros(2, 5, dtype=torch.bool)).shape == (2, 5, 30)
    assert isinstance(_mlm(input_dim=16).input_proj, torch.nn.Identity)
    assert MODELS.get("MLMDecoder") is MLMDecoder
    with pytest.raises(ValueError, match="context_length"):
        dec(torch.randn(1, 10, 12))


def test_mlm_is_bidirectional() -> None:
    dec = _mlm()
    x = torch.randn(1, 9, 12)
    padding = torch.tensor([[False] * 7 + [True] * 2])
    j = 5
    y = x.clone()
    y[0, j] += 1.0
    for pm in (None, padding):
        a, b = dec(x, pm), dec(y, pm)
        for i in range(j):  # left of the changed token: a causal decoder would not move
            assert (a[0, i] - b[0, i]).abs().max() > 1e-4


@pytest.mark.parametrize("fused", [True, False])
def test_mlm_padding_keys_ignored(fused: bool) -> None:
    dec = _mlm()
    for blk in dec.blocks:
        blk.attn.fused_attn = fused
    x = torch.randn(2, 9, 12)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[0, 6:] = True
    padding[1, 4:] = True
    y = x.clone()
    y[padding] = torch.randn(int(padding.sum()), 12) * 5
    a, b = dec(x, padding), dec(y, padding)
    torch.testing.assert_close(a[~padding], b[~padding], rtol=1e-5, atol=1e-5)
    # Control: without the mask the padded content leaks into real positions.
    assert not torch.allclose(dec(x)[~padding], dec(y)[~padding], atol=1e-4)
    # Reference by construction: masking the padding == running the truncated caption alone.
    torch.testing.assert_close(a[0, :6], dec(x[:1, :6])[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[1, :4], dec(x[1:, :4])[0], rtol=1e-5, atol=1e-5)


def test_mlm_all_padding_row_is_finite() -> None:
    dec = _mlm()
    padding = torch.ones(2, 9, dtype=torch.bool)
    padding[0, :3] = False
    out = dec(torch.randn(2, 9, 12), padding)
    assert torch.isfinite(out).all()
