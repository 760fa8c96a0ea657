"""CLIP byte-pair-encoding tokenizer (open_clip's ``SimpleTokenizer``) with a fixed context length.

The BPE vocabulary ships inside the open_clip package, so nothing is downloaded. Token ids:
``[SOT] w_1 ... w_k [EOT] 0 0 ...``; a caption longer than the context is truncated and its last
kept position overwritten with EOT, because text encoders pool at the EOT position. Losing it
silently was a defect of the public Harmony code.

``MASK_TOKEN_ID`` is one id past the BPE vocabulary: masked-language modelling replaces tokens by
it, so the text model's embedding table has ``BPE_VOCAB_SIZE + 1 = 49,409`` rows. Because the mask
id is larger than EOT, CLIP's ``text.argmax(-1)`` trick no longer finds the EOT position of a
masked caption: locate it with ``(text == EOT_TOKEN_ID).int().argmax(-1)`` (:func:`eot_positions`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
PAD_TOKEN_ID = 0
BPE_VOCAB_SIZE = 49408
MASK_TOKEN_ID = 49408  # == BPE_VOCAB_SIZE: the one extra row of the text model's vocabulary


@functools.lru_cache(maxsize=1)
def _simple_tokenizer() -> Any:
    """One open_clip SimpleTokenizer per process (building it parses ~50k BPE merges).

    Imported lazily: ``import open_clip`` takes seconds and many datasets never tokenize.
    """
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    if (tok.sot_token_id, tok.eot_token_id, len(tok.encoder)) != (SOT_TOKEN_ID, EOT_TOKEN_ID, BPE_VOCAB_SIZE):
        raise RuntimeError(
            "open_clip's SimpleTokenizer has ids "
            f"(sot={tok.sot_token_id}, eot={tok.eot_token_id}, vocab={len(tok.encoder)}); "
            f"hirl_like expects ({SOT_TOKEN_ID}, {EOT_TOKEN_ID}, {BPE_VOCAB_SIZE}). "
            "Install an open_clip_torch release with the standard CLIP vocabulary."
        )
    return tok


def eot_positions(text: torch.Tensor) -> torch.Tensor:
    """(B, L) token ids -> (B,) index of the first EOT token in each row (valid with MLM-masked ids too)."""
    return (text == EOT_TOKEN_ID).int().argmax(dim=-1)


class ClipTokenizer:
    """``texts -> LongTensor (n, context_length)`` with SOT/EOT, zero padding and EOT-preserving truncation.

    Picklable and cheap to pickle: only ``context_length`` travels to DataLoader workers, each of
    which builds (once) its own BPE tables.
    """

    def __init__(self, context_length: int = 77) -> None:
        if not isinstance(context_length, int) or context_length < 2:
            raise ValueError(
                f"context_length must be an int >= 2 (room for SOT and EOT), got {context_length!r}; "
                "CLIP uses 77."
            )
        self.context_length = context_length

    @property
    def vocab_size(self) -> int:
        """Rows the text embedding table needs: the BPE vocabulary plus the MLM mask token."""
        return BPE_VOCAB_SIZE + 1

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOT/EOT (open_clip lower-cases and cleans whitespace)."""
        return _simple_tokenizer().encode(text)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of ``ids``, dropping SOT, EOT, padding and mask tokens."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        special = {SOT_TOKEN_ID, EOT_TOKEN_ID, PAD_TOKEN_ID, MASK_TOKEN_ID}
        return _simple_tokenizer().decode([i for i in ids if i not in special]).strip()

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Tokenize one string or a sequence of strings -> LongTensor (n, context_length)."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), PAD_TOKEN_ID, dtype=torch.long)
        body = self.context_length - 2  # positions left between SOT and EOT
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"ClipTokenizer expects strings, got {type(text).__name__} at position {row}")
            ids = [SOT_TOKEN_ID, *self.encode(text)[:body], EOT_TOKEN_ID]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def __repr__(self) -> str:
        return f"ClipTokenizer(context_length={self.context_length})"
