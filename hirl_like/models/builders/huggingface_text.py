"""``pipeline.text.name: huggingface``: a Hugging Face ``transformers`` model as the text tower.

The model is built from LOCAL files only (``local_files_only=True``; ``HF_HUB_OFFLINE`` and
``TRANSFORMERS_OFFLINE`` are set for the process unless already set), from one of:

- ``config``: an inline config dict with its ``model_type`` (random init), e.g. a tiny BERT that
  reads the CLIP BPE ids of the toolbox's tokenizer::

      config: {model_type: bert, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2,
               intermediate_size: 256, vocab_size: 49408, max_position_embeddings: 77}

  or the path of a local directory holding a ``config.json`` (random init from it);
- ``pretrained``: a local checkpoint directory (``config.json`` + weights, as ``save_pretrained``
  writes it): its weights are loaded; an inline ``config`` dict then overrides entries of its config.

A name that is not a local path (a Hub id such as ``bert-base-uncased``) would be downloaded and
is refused with a message asking for a local directory.

Token ids: by default the CLIP BPE ids of ``ClipTokenizer`` (the config's ``vocab_size`` must be at
least 49,408; 49,409 gives MLM's mask id a row); the attention mask is then every position up to
and including the first EOT (``caption_lengths``). With ``tokenizer`` (a local HF tokenizer
directory) the data and the zero-shot prompts are tokenised by it and the mask is ``id != pad``.
BERT-like models are built without their pooler layer (``add_pooling_layer=False``): the
``pooler`` (``cls`` | ``mean`` | ``eos``) reads the last hidden states instead, so no weight is
left without gradient.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from hirl_like.models.builders.adapters import prepare_network
from hirl_like.models.builders.plain import to_plain
from hirl_like.models.builders.pretrained import pretrained_skipped, warn_locked_random
from hirl_like.models.builders.text_tower import BuilderTextTower
from hirl_like.registry import MODELS

WHERE = "pipeline.text"
CLIP_BPE_VOCAB = 49408  # ids 0 .. 49407 (hirl_like.data.tokenizer.BPE_VOCAB_SIZE)


def offline() -> None:
    """No Hub access from this process (set before ``transformers`` is first used)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def local_path(value: str, key: str, kind: str) -> Path:
    """The existing local path ``value`` of ``WHERE.key``, or a refusal saying it would be a download."""
    path = Path(os.path.expanduser(str(value)))
    if path.exists():
        return path
    looks_local = str(value).startswith(("/", ".", "~")) or os.sep in str(value) and str(value).count("/") > 1
    if looks_local:
        raise FileNotFoundError(f"{WHERE}.{key}={value!r}: no such local {kind}.")
    raise ValueError(
        f"{WHERE}.{key}={value!r} is not a local {kind}: it reads as a Hugging Face Hub id, which would be "
        "downloaded, and nothing is downloaded at run time here. Save the model on a machine with network access "
        f"(AutoModel.from_pretrained(...).save_pretrained(dir); the tokenizer likewise) and set {key} to that LOCAL "
        "directory, or give an inline config dict for a random initialisation."
    )


def resolve_config(config: Mapping[str, Any] | str | None, pretrained: str | None) -> Any:
    """The ``transformers`` config of the tower (see the module docstring)."""
    offline()
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = to_plain(config)
    if pretrained is not None:
        if isinstance(config, str):
            raise ValueError(f"{WHERE}: give either pretrained (a checkpoint directory) or config as a path, not both.")
        base = AutoConfig.from_pretrained(str(local_path(pretrained, "pretrained", "checkpoint directory")),
                                          local_files_only=True)
        overrides = dict(config or {})
        if overrides.pop("model_type", base.model_type) != base.model_type:
            raise ValueError(f"{WHERE}.config.model_type differs from the checkpoint's {base.model_type!r}.")
        base.update(overrides)
        return base
    if isinstance(config, str):
        return AutoConfig.from_pretrained(str(local_path(config, "config", "config directory or file")),
                                          local_files_only=True)
    if not isinstance(config, Mapping):
        raise ValueError(f"{WHERE}: a huggingface tower needs config (an inline dict with model_type, or a local "
                         "config directory) or pretrained (a local checkpoint directory).")
    values = dict(config)
    model_type = values.pop("model_type", None)
    if model_type not in CONFIG_MAPPING:
        close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=5)
        raise ValueError(f"{WHERE}.config.model_type={model_type!r} is not a transformers model type"
                         f"{'; close: ' + ', '.join(close) if close else ''}.")
    config_class = CONFIG_MAPPING[model_type]
    known = set(config_class().to_dict()) | set(inspect.signature(config_class.__init__).parameters)
    for key in values:  # transformers would keep a misspelt key as an unused attribute
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            raise ValueError(f"{WHERE}.config: {model_type} configs have no key {key!r}"
                             f"{f'; did you mean {close[0]!r}?' if close else '.'}")
    return AutoConfig.for_model(model_type, **values)


def create_hf_model(config: Any, pretrained: str | None) -> nn.Module:
    """``AutoModel`` of ``config`` (without a BERT-like pooler), the local ``pretrained`` weights loaded."""
    from transformers import AutoModel
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    kwargs: dict[str, Any] = {}
    cls = MODEL_MAPPING.get(type(config), None)
    if cls is not None and "add_pooling_layer" in inspect.signature(cls.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    if pretrained is not None and not pretrained_skipped():
        return AutoModel.from_pretrained(str(local_path(pretrained, "pretrained", "checkpoint directory")),
                                         config=config, local_files_only=True, **kwargs)
    return AutoModel.from_config(config, **kwargs)


def tokenizer_pad_id(tokenizer: str, vocab_size: int) -> int:
    """The pad id of the local HF tokenizer directory ``tokenizer`` (checked against the model)."""
    offline()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(local_path(tokenizer, "tokenizer", "tokenizer directory")),
                                        local_files_only=True)
    if tok.pad_token_id is None:
        raise ValueError(f"{WHERE}.tokenizer={tokenizer!r} has no pad token; add one (tokenizer.pad_token = ...).")
    if len(tok) > vocab_size:
        raise ValueError(f"{WHERE}.tokenizer has {len(tok)} ids but the model's vocab_size is {vocab_size}.")
    if len(tok) > CLIP_BPE_VOCAB - 1:
        import warnings

        warnings.warn(f"{WHERE}.tokenizer has {len(tok)} ids, so id {CLIP_BPE_VOCAB - 1} is one of its tokens: the "
                      "training collate cuts a caption batch after that id (the CLIP BPE's end token) when every "
                      "caption of the batch holds it (hirl_like/data/hf_tokenizer.py).", stacklevel=2)
    return int(tok.pad_token_id)


@MODELS.register("huggingface", aliases=("HuggingFaceTextTower",))
class HuggingFaceTextTower(BuilderTextTower):
    """A ``transformers`` text tower: ``forward(tokens (B, L)) -> (B, E)``.

    Args:
        config: an inline config dict (with ``model_type``) or a local config directory / file.
        pretrained: a local checkpoint directory whose weights are loaded (null = random init).
        tokenizer: a local HF tokenizer directory, or null for the CLIP BPE ids.
        context_length: the most tokens of a caption (<= the model's ``max_position_embeddings``).
        pooler: ``cls`` | ``mean`` (over the attention mask) | ``eos`` (the last real token).
        embed_dim: E, passed by the pipeline.
        lock, adapter, lora, head: as for every builder tower.
        grad_checkpointing: ``gradient_checkpointing_enable`` (non-reentrant).
    """

    def __init__(
        self,
        config: Mapping[str, Any] | str | None = None,
        pretrained: str | None = None,
        tokenizer: str | None = None,
        context_length: int = 77,
        pooler: str = "mean",
        embed_dim: int = 512,
        lock: bool = False,
        adapter: str | None = None,
        lora: Mapping[str, Any] | None = None,
        head: Mapping[str, Any] | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        hf_config = resolve_config(config, pretrained)
        network = create_hf_model(hf_config, pretrained)
        warn_locked_random(WHERE, lock, Path(pretrained) if pretrained else None)
        vocab = int(getattr(hf_config, "vocab_size", 0))
        pad = tokenizer_pad_id(tokenizer, vocab) if tokenizer is not None else None
        if tokenizer is None and vocab < CLIP_BPE_VOCAB:
            raise ValueError(f"{WHERE}.config.vocab_size={vocab}: the CLIP BPE ids go up to {CLIP_BPE_VOCAB - 1}, so "
                             f"the model needs vocab_size >= {CLIP_BPE_VOCAB} (49409 for MLM's mask id), or give a "
                             "local tokenizer directory matching its vocabulary.")
        positions = getattr(hf_config, "max_position_embeddings", None)
        if positions is not None and context_length > int(positions):
            raise ValueError(f"{WHERE}.context_length={context_length} exceeds the model's max_position_embeddings "
                             f"{positions}.")
        width = int(getattr(hf_config, "hidden_size", 0) or getattr(hf_config, "d_model", 0))
        super().__init__(WHERE, width, width, embed_dim, context_length, vocab, pooler, head, pad_token_id=pad)
        if grad_checkpointing:
            network.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = prepare_network(network, WHERE, lock, adapter, lora)
        self.lock, self.adapter = bool(lock), adapter
        self.causal = bool(getattr(hf_config, "is_decoder", False))
        self.tokenizer_path = tokenizer

    def forward_tokens(self, tokens: Tensor, causal: bool | None = None) -> Tensor:
        """(B, L) ids -> (B, L, W) last hidden states, padding hidden by the attention mask.

        The attention of a HF model is its architecture's (an encoder attends both ways): asking
        for the other mode (``causal``) is refused rather than silently ignored.
        """
        self.check_length(tokens)
        if causal is not None and bool(causal) != self.causal:
            raise ValueError(f"this {type(self.model).__name__} attends {'causally' if self.causal else 'both ways'}; "
                             f"causal={causal} was asked for (a text_transformer or open_clip tower can do both).")
        return self.model(input_ids=tokens, attention_mask=self.valid_mask(tokens).long()).last_hidden_state
