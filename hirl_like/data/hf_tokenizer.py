"""A local Hugging Face tokenizer with the ``ClipTokenizer`` interface (``pipeline.text.tokenizer``).

``HFTokenizer(path, context_length)(texts) -> LongTensor (n, L)``: the tokenizer's special tokens
(BERT: ``[CLS] ... [SEP]``), truncated to ``context_length`` and padded with its pad id to L = the
context (``pad_to="context"``, so that samples stack) or to the call's longest text
(``pad_to="batch"``). Read from a LOCAL directory only (``local_files_only=True``); a Hub id is refused
by the text tower that names it. Picklable: workers load their own copy from the path.

The training collate cuts caption batches after the CLIP BPE's end id (49407,
``hirl_like.data.tokenizer.trim_caption_batch``): captions of a tokenizer with fewer ids keep their
full context length. A tokenizer with more ids (RoBERTa: 50,265) has a real token 49407, and a
batch whose every caption holds it would be cut after it (the text tower warns about such a
vocabulary); with batches of many captions this does not happen in practice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import torch


class HFTokenizer:
    """Args:
    path: a local tokenizer directory (``save_pretrained`` output).
    context_length: the most tokens a text keeps, special tokens included.
    pad_to: ``"context"`` (L = context_length) or ``"batch"`` (L = the longest text of the call).
    """

    def __init__(self, path: str, context_length: int = 77, pad_to: Literal["context", "batch"] = "context") -> None:
        if not os.path.isdir(os.path.expanduser(path)):
            raise FileNotFoundError(f"tokenizer directory not found: {path!r} (a local directory is needed).")
        if pad_to not in ("context", "batch"):
            raise ValueError(f"pad_to must be 'context' or 'batch', got {pad_to!r}.")
        self.path = os.path.expanduser(path)
        self.context_length = int(context_length)
        self.pad_to = pad_to
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """One string or n strings -> LongTensor (n, L)."""
        if isinstance(texts, str):
            texts = [texts]
        padding = "max_length" if self.pad_to == "context" else "longest"
        out = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return out["input_ids"].long()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokenizer": None}

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path!r}, context_length={self.context_length})"
