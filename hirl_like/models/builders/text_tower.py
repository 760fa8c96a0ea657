"""The text tower a builder (open_clip, Hugging Face transformers) makes, as the pipeline reads it.

What the forwards and objectives expect of a text tower (``hirl_like/pipelines/forwards/text.py``,
``mlm``, ``text_distill``, the evaluation's ``TextTower``), and what :class:`BuilderTextTower` gives:

- ``forward(tokens (B, L)) -> (B, E)``: projected, not normalised, caption embeddings;
- ``forward_tokens(tokens, causal=None) -> (B, L, W)``: the last hidden states;
- ``pool(features (B, L, W), tokens) -> (B, W)`` by ``pooler``: ``cls`` (position 0: CLIP's start
  token, BERT's [CLS]), ``mean`` (mean over the attention mask, as ITRA's ``mean_pooling``) or
  ``eos`` (the end token: CLIP's EOT, a HF tokenizer's last real token);
- ``text_projection(pooled (B, W')) -> (B, E)``: the projection head (``head`` node);
- ``valid_mask(tokens) -> (B, L)`` bool: the attention mask, True on real tokens;
- ``causal``, ``context_length``, ``width`` (W), ``vocab_size``, ``embed_dim`` (E).

Token ids. With the CLIP BPE (the default: the toolbox's ``ClipTokenizer`` and collate) a caption
is ``[SOT] w_1 .. w_k [EOT] 0 0 ..`` cut to the batch's longest caption rounded up to 8; its real
positions run up to and including the first EOT (``caption_lengths``; the pad id 0 is also the
BPE id of "!", so ``id != 0`` would be wrong). With a Hugging Face tokenizer (a local directory,
``tokenizer``) the real positions are those whose id is not the tokenizer's pad id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hirl_like.models.text import EOT_TOKEN_ID
from hirl_like.models.builders.node_checks import check_tower_node
from hirl_like.models.builders.projection import build_projection_head

POOLERS = ("cls", "mean", "eos")


def masked_mean(features: Tensor, mask: Tensor) -> Tensor:
    """(B, L, W), (B, L) bool -> (B, W): the mean of the positions where ``mask`` is True."""
    weights = mask.to(features.dtype).unsqueeze(-1)
    return (features * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class BuilderTextTower(nn.Module):
    """Shared parts of the builder text towers; subclasses set ``self.model`` and ``forward_tokens``.

    Args:
        where: the config path for messages (``pipeline.text``).
        width: W, the hidden size of ``forward_tokens``.
        pooled_width: W', the width :meth:`text_projection` takes (W, or a native projection's output).
        embed_dim: E, the joint space.
        context_length: the most tokens a caption may have.
        vocab_size: rows of the token embedding.
        pooler: ``cls`` | ``mean`` | ``eos``.
        head: the projection head node (W' -> E).
        pad_token_id: the tokenizer's padding id, or None for the CLIP BPE (real = up to the EOT).
        eot_token_id: the CLIP BPE's end token (used when ``pad_token_id`` is None).
    """

    validate_config = staticmethod(check_tower_node)  # config-load check of head / adapter

    def __init__(self, where: str, width: int, pooled_width: int, embed_dim: int, context_length: int,
                 vocab_size: int, pooler: str, head: Mapping[str, Any] | None, pad_token_id: int | None = None,
                 eot_token_id: int = EOT_TOKEN_ID) -> None:
        super().__init__()
        if pooler not in POOLERS:
            raise ValueError(f"{where}.pooler must be one of {', '.join(POOLERS)}, got {pooler!r}.")
        self.width = int(width)
        self.embed_dim = int(embed_dim)
        self.context_length = int(context_length)
        self.vocab_size = int(vocab_size)
        self.pooler = pooler
        self.pad_token_id = pad_token_id
        self.eot_token_id = int(eot_token_id)
        self.causal = False
        self.lock = False
        self.adapter: str | None = None
        self.head = build_projection_head(head, int(pooled_width), self.embed_dim, f"{where}.head")

    def train(self, mode: bool = True) -> "BuilderTextTower":
        """As ``nn.Module.train``, but a locked network stays in eval mode (no dropout)."""
        super().train(mode)
        if self.lock:
            self.model.eval()
        return self

    def _frozen(self) -> bool:
        return self.lock and self.adapter is None

    # -- masks and pooling ------------------------------------------------------------------
    def valid_mask(self, tokens: Tensor) -> Tensor:
        """(B, L) ids -> (B, L) bool, True on real tokens (the attention mask)."""
        if self.pad_token_id is not None:
            return tokens != self.pad_token_id
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return positions.unsqueeze(0) <= self.eot_positions(tokens).unsqueeze(1)

    def eot_positions(self, tokens: Tensor) -> Tensor:
        """(B,) index of each caption's end token: CLIP's first EOT (the last position when there
        is none), or a HF tokenizer's last real token."""
        if self.pad_token_id is not None:
            return ((tokens != self.pad_token_id).sum(dim=1) - 1).clamp_min(0)
        is_eot = tokens == self.eot_token_id
        first = is_eot.int().argmax(dim=1)
        return torch.where(is_eot.any(dim=1), first, torch.full_like(first, tokens.shape[1] - 1))

    def pool(self, features: Tensor, tokens: Tensor) -> Tensor:
        """(B, L, W) -> (B, W) by ``pooler``."""
        if self.pooler == "cls":
            return features[:, 0]
        if self.pooler == "mean":
            return masked_mean(features, self.valid_mask(tokens))
        return features[torch.arange(features.shape[0], device=features.device), self.eot_positions(tokens)]

    # -- projection -------------------------------------------------------------------------
    def native_projection(self, pooled: Tensor) -> Tensor:
        """The network's own projection of the pooled feature (none by default): (B, W) -> (B, W')."""
        return pooled

    def text_projection(self, pooled: Tensor) -> Tensor:
        """(B, W) pooled -> (B, E): the network's own projection (if any), then the head."""
        return self.head(self.native_projection(pooled))

    def forward_tokens(self, tokens: Tensor, causal: bool | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_length(self, tokens: Tensor) -> None:
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"captions have {tokens.shape[1]} tokens; the context length is {self.context_length}.")

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, L) ids -> (B, E) projected (not normalised) caption embeddings."""
        if self._frozen():
            with torch.no_grad():
                pooled = self.native_projection(self.pool(self.forward_tokens(tokens), tokens))
            return self.head(pooled)
        return self.text_projection(self.pool(self.forward_tokens(tokens), tokens))
