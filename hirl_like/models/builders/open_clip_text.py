"""The open_clip text tower by model name (``pipeline.text.name: open_clip``).

The network is open_clip's ``TextTransformer`` of that model, built from its ``text_cfg`` alone
(``open_clip.model._build_text_tower``; no image tower, nothing downloaded), random init unless a
LOCAL ``pretrained`` file is given (a whole open_clip checkpoint: its text weights are taken).
It reads the CLIP BPE ids of the toolbox's tokenizer as they are.

Forward (the toolbox's own, on open_clip's modules): token + position embeddings for the batch
length L, the transformer with CLIP's causal mask (``causal=True``, the default) or with only the
padding keys hidden (``causal=False``: MLM, text distillation), ``ln_final``; pooling by ``pooler``
(``eos`` = CLIP's: the first EOT position, found by id, not by ``argmax`` as open_clip does,
because the MLM mask id is above EOT); then the model's own ``text_projection`` (W -> its
``embed_dim``) and the ``head`` to the pipeline's E (``head: {type: none}`` when they agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hirl_like.models.builders.adapters import prepare_network
from hirl_like.models.builders.open_clip_config import open_clip_model_config, open_clip_tags, tower_config
from hirl_like.models.builders.pretrained import (
    check_local_file, load_weights, pretrained_skipped, read_state_dict, warn_locked_random,
)
from hirl_like.models.builders.text_tower import BuilderTextTower
from hirl_like.registry import MODELS

WHERE = "pipeline.text"
NOT_TEXT = ("visual.", "logit_scale", "logit_bias")


def create_open_clip_text(model: str, context_length: int, model_kwargs: Mapping[str, Any] | None) -> nn.Module:
    """open_clip's ``TextTransformer`` of ``model`` at random initialisation."""
    from open_clip.model import _build_text_tower

    config = open_clip_model_config(model, WHERE)
    text = tower_config(config, "text_cfg", WHERE, model_kwargs)
    text["context_length"] = int(context_length)
    if text.get("embed_cls"):
        raise ValueError(f"{WHERE}: {model}'s text tower appends a CLS token (CoCa); pick a CLIP text tower.")
    try:
        return _build_text_tower(int(config["embed_dim"]), text, quick_gelu=bool(config.get("quick_gelu", False)))
    except TypeError as err:
        raise ValueError(f"{WHERE}.model_kwargs: open_clip's text_cfg does not take {sorted(model_kwargs or {})}: "
                         f"{err}") from None


def _load_text_weights(network: nn.Module, path: Any) -> None:
    """Load the text weights of a local open_clip file: a whole checkpoint (minus its image tower
    and logit scale) or the text tower's own state dict."""
    state = read_state_dict(path)
    nested = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), Mapping)), state)
    text = {k.removeprefix("module."): v for k, v in nested.items()
            if isinstance(k, str) and not k.removeprefix("module.").startswith(NOT_TEXT)}
    load_weights(network, text, WHERE, str(path), prefixes=("",))


@MODELS.register("open_clip_text", aliases=("OpenClipTextTower",))
class OpenClipTextTower(BuilderTextTower):
    """open_clip text tower: ``forward(tokens (B, L)) -> (B, E)``.

    Args:
        model: an ``open_clip.list_models()`` name whose text tower is a CLIP transformer.
        pretrained: null or a LOCAL file; pretrained tags are refused (they would be downloaded).
        context_length: positions of the tower (and of the caption tokenizer): 77 as CLIP.
        pooler: ``eos`` (CLIP), ``mean`` or ``cls``.
        embed_dim: E, passed by the pipeline (its ``embed_dim``).
        model_kwargs: overrides of the model's ``text_cfg`` (``{width: 64, heads: 2, layers: 2}``;
            ``vocab_size: 49409`` gives MLM's mask id a row).
        lock, adapter, lora, head: as for every builder tower.
        grad_checkpointing: open_clip's ``set_grad_checkpointing``.
    """

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = None,
        context_length: int = 77,
        pooler: str = "eos",
        embed_dim: int = 512,
        model_kwargs: Mapping[str, Any] | None = None,
        lock: bool = False,
        adapter: str | None = None,
        lora: Mapping[str, Any] | None = None,
        head: Mapping[str, Any] | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        network = create_open_clip_text(model, context_length, model_kwargs)
        path = check_local_file(WHERE, pretrained, open_clip_tags(model) if pretrained else ())
        if path is not None and not pretrained_skipped():
            _load_text_weights(network, path)
        warn_locked_random(WHERE, lock, path)
        projection = network.text_projection
        pooled_width = network.width if projection is None else (
            projection.out_features if isinstance(projection, nn.Linear) else projection.shape[1])
        super().__init__(WHERE, network.width, pooled_width, embed_dim, context_length, network.vocab_size,
                         pooler, head)
        if grad_checkpointing:
            network.set_grad_checkpointing(True)
        self.model = prepare_network(network, WHERE, lock, adapter, lora)
        self.lock, self.adapter = bool(lock), adapter
        self.causal = True
        self.heads = int(network.heads)
        self.model_name = model

    def native_projection(self, pooled: Tensor) -> Tensor:
        """(B, W) -> (B, W') through open_clip's ``text_projection`` (a (W, W') matrix or a Linear)."""
        projection = self.model.text_projection
        if projection is None:
            return pooled
        return projection(pooled) if isinstance(projection, nn.Module) else pooled @ projection

    def _attention_mask(self, tokens: Tensor, causal: bool, dtype: torch.dtype) -> Tensor:
        length = tokens.shape[1]
        if causal:  # (L, L): position i sees 0..i
            return torch.full((length, length), float("-inf"), device=tokens.device, dtype=dtype).triu(1)
        keys = self.valid_mask(tokens)  # (B, L): padding keys hidden, per head as nn.MultiheadAttention wants
        mask = torch.zeros(keys.shape[0], length, length, device=tokens.device, dtype=dtype)
        mask.masked_fill_(~keys[:, None, :], float("-inf"))
        return mask.repeat_interleave(self.heads, dim=0)  # (B * heads, L, L)

    def forward_tokens(self, tokens: Tensor, causal: bool | None = None) -> Tensor:
        """(B, L) ids, L <= context_length -> (B, L, W) after ``ln_final``; causal by default."""
        self.check_length(tokens)
        causal = self.causal if causal is None else causal
        net = self.model
        x = net.token_embedding(tokens) + net.positional_embedding[: tokens.shape[1]]
        x = net.transformer(x, attn_mask=self._attention_mask(tokens, causal, x.dtype))
        return net.ln_final(x)
