"""CLIP text transformer: token + position embeddings, pre-norm blocks, final LayerNorm,
features pooled at the end-of-text token, linear projection into the joint space.

Defaults follow CLIP ViT-B/16's text tower (width 512, 12 layers, 8 heads, context 77) with the
CLIP BPE vocabulary plus one dedicated MLM mask token (49,408 + 1).

Attention is causal by default (as CLIP). ``forward_tokens(..., causal=False)`` runs the same
weights bidirectionally with padding keys masked out: Harmony's MLM and text distillation use
it so that a masked word sees both its left and right context (the public code ran MLM through
the causal mask, so a masked word saw only its left context).

Pooling takes the position of the *end token id* (not ``argmax(token id)`` as open_clip does:
with a mask token id above the end id, argmax would pool at a masked word).

Any length L <= ``context_length``: caption batches arrive cut to their longest caption rounded
up to a multiple of 8 (``hirl_like/data/tokenizer.py``). Positions use the first L rows of the
position table, the causal mask is SDPA's ``is_causal`` for the actual L and the bidirectional
mask is built from the batch's own padding, so the features of every real token, the pooled
embedding and every loss equal those of the same captions padded to the full context.

``grad_checkpointing=True`` recomputes each block's activations in the backward pass instead of
keeping them (``torch.utils.checkpoint``, ``use_reentrant=False``: works with keyword arguments,
with inputs that need no grad and under autocast). It trades ~1/3 more compute for the activation
memory of all but one block; it is only active while gradients are recorded, so EMA teachers and
evaluation run as usual.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from timm.models.vision_transformer import Block

from hirl_like.registry import MODELS

SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
VOCAB_SIZE_WITH_MASK = 49409


@MODELS.register("text_transformer", aliases=("TextTransformer",))
class TextTransformer(nn.Module):
    """Args:
    vocab_size: embedding rows (CLIP BPE 49,408 + 1 mask token).
    context_length, width, layers, heads, mlp_ratio: transformer shape.
    embed_dim: output size of ``text_projection`` (joint space).
    causal: default attention mode of ``forward_tokens``.
    eot_token_id: id of the end-of-text token used for pooling.
    grad_checkpointing: recompute every block in the backward pass (activation memory of one
        block instead of ``layers``); config key ``pipeline.text.grad_checkpointing``.
    """

    def __init__(
        self,
        vocab_size: int = VOCAB_SIZE_WITH_MASK,
        context_length: int = 77,
        width: int = 512,
        layers: int = 12,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        embed_dim: int = 512,
        causal: bool = True,
        eot_token_id: int = EOT_TOKEN_ID,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"text width {width} must be divisible by heads {heads}.")
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.width = width
        self.embed_dim = embed_dim
        self.causal = causal
        self.eot_token_id = eot_token_id
        self.grad_checkpointing = bool(grad_checkpointing)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Linear(width, embed_dim, bias=False)
        self._init_weights(layers)

    def _init_weights(self, layers: int) -> None:
        # CLIP's init: small embeddings, projections scaled by depth.
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = (self.width**-0.5) * ((2 * layers) ** -0.5)
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=self.width**-0.5)
            nn.init.normal_(block.attn.proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.fc1.weight, std=(2 * self.width) ** -0.5)
            nn.init.normal_(block.mlp.fc2.weight, std=proj_std)
        nn.init.normal_(self.text_projection.weight, std=self.width**-0.5)

    def valid_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: True up to and including the end token (real tokens), False on padding."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return positions.unsqueeze(0) <= self.eot_positions(tokens).unsqueeze(1)

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B,) index of the first end token (the last position when a caption has none)."""
        is_eot = tokens == self.eot_token_id
        first = is_eot.int().argmax(dim=1)
        return torch.where(is_eot.any(dim=1), first, torch.full_like(first, tokens.shape[1] - 1))

    def forward_tokens(self, tokens: torch.Tensor, causal: bool | None = None) -> torch.Tensor:
        """(B, L) token ids, any L <= context_length -> (B, L, width) final-LayerNorm features.

        Causal: position i attends to 0..i (SDPA's mask for this L), so padding after the EOT
        never reaches a real token. Bidirectional: every query attends to the real tokens of its
        caption only, (B, 1, 1, L) key mask. Either way real positions do not depend on L.
        """
        causal = self.causal if causal is None else causal
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"captions have {tokens.shape[1]} tokens; the context length is {self.context_length}.")
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        attn_mask = None
        if not causal:  # bidirectional: only padding keys are hidden
            attn_mask = self.valid_mask(tokens)[:, None, None, :]
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                x = checkpoint(block, x, attn_mask=attn_mask, is_causal=causal, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask, is_causal=causal)
        return self.ln_final(x)

    def pool(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, width) -> (B, width) at the end token."""
        return features[torch.arange(features.shape[0], device=features.device), self.eot_positions(tokens)]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, embed_dim) projected (not normalised) caption embeddings."""
        return self.text_projection(self.pool(self.forward_tokens(tokens), tokens))
