"""Decoders for the reconstruction objectives: MAE's pixel decoder and the MLM text decoder.

MAEDecoder (He et al. 2022, ``models_mae.py``): embed the visible tokens, append a shared mask
token for every removed patch, undo the shuffle with ``ids_restore``, add FIXED 2-D sin-cos
position embeddings, run ``depth`` pre-norm Transformer blocks, and predict ``p*p*C`` pixel values
per patch. The position embeddings are a non-trainable buffer filled with the sin-cos table: the
public Harmony code leaves them at zero, so all mask tokens of an image are identical inputs and
get identical predictions.

MLMDecoder (Harmony's masked-language-modelling decoder): ``depth`` Transformer blocks with
BIDIRECTIONAL attention over the caption (padding keys masked out) and a vocabulary classifier.
The public Harmony code runs it causally, so a masked word only sees its left context.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from timm.models.vision_transformer import Block

from hirl_like.models.pos_embed import sincos_2d_pos_embed
from hirl_like.registry import MODELS


def _as_grid(grid_size: int | tuple[int, int] | list[int], owner: str) -> tuple[int, int]:
    if isinstance(grid_size, int):
        h = w = grid_size
    else:
        if len(grid_size) != 2:
            raise ValueError(f"{owner}: grid_size must be an int or (h, w), got {grid_size!r}.")
        h, w = int(grid_size[0]), int(grid_size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"{owner}: grid_size must be positive, got {grid_size!r}.")
    return h, w


def _xavier_init(module: nn.Module) -> None:
    """MAE's init: xavier-uniform Linear weights, zero biases, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@MODELS.register()
class MAEDecoder(nn.Module):
    """MAE pixel decoder (defaults: MAE's 8 blocks, width 512, 16 heads).

    Args:
        grid_size: patch grid of the encoder input, int or (h, w); N = h * w.
        encoder_dim: width of the encoder tokens.
        patch_size: p; each patch is predicted as p * p * in_chans values
            (in ``patchify`` order: (p, p, C) flattened, as MAE).
        in_chans: image channels C.
        embed_dim, depth, num_heads, mlp_ratio: decoder Transformer shape.

    The position table ``pos_embed`` (1, 1 + N, embed_dim) is a non-persistent buffer: it is a
    function of the config, is never trained, and is not read from checkpoints, so a checkpoint
    holding the zero table of the public Harmony code cannot bring the defect back.
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int],
        encoder_dim: int,
        patch_size: int,
        in_chans: int = 3,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.grid_size = _as_grid(grid_size, "MAEDecoder")
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        if encoder_dim <= 0 or patch_size <= 0 or in_chans <= 0:
            raise ValueError(
                f"MAEDecoder: encoder_dim, patch_size and in_chans must be positive, got "
                f"{encoder_dim}, {patch_size}, {in_chans}."
            )
        if embed_dim <= 0 or embed_dim % 4 != 0:
            raise ValueError(f"MAEDecoder: embed_dim must be a positive multiple of 4 (sin-cos table), got {embed_dim}.")
        if num_heads <= 0 or embed_dim % num_heads != 0:
            raise ValueError(f"MAEDecoder: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}).")
        if depth < 0:
            raise ValueError(f"MAEDecoder: depth must be >= 0, got {depth}.")
        self.encoder_dim = encoder_dim
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim

        self.decoder_embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos = sincos_2d_pos_embed(embed_dim, *self.grid_size, cls_token=True).unsqueeze(0)
        self.register_buffer("pos_embed", pos, persistent=False)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)  # MAE's decoder LayerNorm eps
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self.pred = nn.Linear(embed_dim, patch_size * patch_size * in_chans)

        self.apply(_xavier_init)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: Tensor, ids_restore: Tensor) -> Tensor:
        """Predict every patch of every image.

        Args:
            tokens: (B, 1 + K, encoder_dim) encoder output: CLS, then the K visible patches in the
                kept order (``ids_keep`` of ``random_masking``).
            ids_restore: (B, N) long; shuffled order = kept tokens first, then removed ones, and
                full-sequence position j takes shuffled element ``ids_restore[b, j]``.

        Returns:
            (B, N, patch_size**2 * in_chans) predictions for all N patches (CLS dropped).
        """
        if tokens.dim() != 3 or tokens.shape[-1] != self.encoder_dim:
            raise ValueError(
                f"MAEDecoder: tokens must be (B, 1 + K, {self.encoder_dim}), got {tuple(tokens.shape)}."
            )
        b, n = tokens.shape[0], self.num_patches
        if ids_restore.shape != (b, n):
            raise ValueError(f"MAEDecoder: ids_restore must be (B, N) = ({b}, {n}), got {tuple(ids_restore.shape)}.")
        num_kept = tokens.shape[1] - 1
        if not 0 <= num_kept <= n:
            raise ValueError(f"MAEDecoder: got {num_kept} visible tokens for a grid of {n} patches.")

        x = self.decoder_embed(tokens)  # (B, 1 + K, D)
        mask_tokens = self.mask_token.to(x.dtype).expand(b, n - num_kept, -1)
        shuffled = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (B, N, D), kept first
        index = ids_restore.to(torch.long).unsqueeze(-1).expand(-1, -1, x.shape[-1])
        unshuffled = torch.gather(shuffled, 1, index)  # (B, N, D), original patch order
        x = torch.cat([x[:, :1], unshuffled], dim=1) + self.pos_embed.to(x.dtype)

        for block in self.blocks:
            x = block(x)
        x = self.pred(self.norm(x))
        return x[:, 1:]


@MODELS.register()
class MLMDecoder(nn.Module):
    """Bidirectional Transformer decoder predicting token ids (Harmony's MLM: 4 layers, width 512).

    Args:
        input_dim: width of the text-encoder tokens fed in.
        width, depth, num_heads, mlp_ratio: decoder Transformer shape.
        vocab_size: classifier size (49,408 CLIP BPE tokens + 1 mask token by default).
        context_length: maximum sequence length L (learned position table size).
    """

    def __init__(
        self,
        input_dim: int = 512,
        width: int = 512,
        depth: int = 4,
        num_heads: int = 8,
        vocab_size: int = 49409,
        context_length: int = 77,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        for arg, value in (("input_dim", input_dim), ("width", width), ("vocab_size", vocab_size),
                           ("context_length", context_length)):
            if value <= 0:
                raise ValueError(f"MLMDecoder: {arg} must be positive, got {value}.")
        if num_heads <= 0 or width % num_heads != 0:
            raise ValueError(f"MLMDecoder: width ({width}) must be divisible by num_heads ({num_heads}).")
        if depth < 0:
            raise ValueError(f"MLMDecoder: depth must be >= 0, got {depth}.")
        self.input_dim = input_dim
        self.context_length = context_length

        self.input_proj: nn.Module = nn.Identity() if input_dim == width else nn.Linear(input_dim, width)
        self.pos_embed = nn.Parameter(torch.empty(context_length, width))
        self.blocks = nn.ModuleList(
            Block(width, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.pos_embed, std=0.01)  # CLIP's text position-embedding init

    @staticmethod
    def key_padding_attn_mask(padding_mask: Tensor) -> Tensor:
        """(B, L) bool, True = padding -> (B, 1, 1, L) bool attention mask, True = may attend.

        A row made only of padding would leave its queries nothing to attend to (softmax over
        all -inf = NaN); such rows attend everywhere instead. Their outputs are padding anyway.
        """
        allowed = ~padding_mask.to(torch.bool)
        allowed = allowed | ~allowed.any(dim=1, keepdim=True)
        return allowed[:, None, None, :]

    def forward(self, tokens: Tensor, padding_mask: Tensor | None = None, select: Tensor | None = None) -> Tensor:
        """tokens: (B, L, input_dim); padding_mask: (B, L) bool, True = padding, or None;
        select: (B, L) bool, positions whose logits are wanted (e.g. the masked ones), or None.

        Returns logits (B, L, vocab_size), or (M, vocab_size) for the M selected positions in
        row-major order: the vocabulary projection (49k outputs a token) dominates the cost, and
        MLM scores only the ~20% masked positions. Every position attends to every non-padding position
        (both directions); padding keys are never attended to, so the content at padded positions
        cannot change the outputs at real positions.
        """
        if tokens.dim() != 3 or tokens.shape[-1] != self.input_dim:
            raise ValueError(f"MLMDecoder: tokens must be (B, L, {self.input_dim}), got {tuple(tokens.shape)}.")
        b, length = tokens.shape[:2]
        if length > self.context_length:
            raise ValueError(f"MLMDecoder: sequence length {length} exceeds context_length {self.context_length}.")
        attn_mask = None
        if padding_mask is not None:
            if padding_mask.shape != (b, length):
                raise ValueError(
                    f"MLMDecoder: padding_mask must be (B, L) = ({b}, {length}), got {tuple(padding_mask.shape)}."
                )
            attn_mask = self.key_padding_attn_mask(padding_mask)

        x = self.input_proj(tokens) + self.pos_embed[:length].to(tokens.dtype)
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        x = self.norm(x)
        if select is not None:
            x = x[select]
        return self.head(x)
