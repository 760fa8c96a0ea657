"""CLIP byte-pair-encoding tokenizer (open_clip's ``SimpleTokenizer``) and caption-batch padding.

The BPE vocabulary ships inside the open_clip package, so nothing is downloaded. Token ids:
``[SOT] w_1 ... w_k [EOT] 0 0 ...``; a caption longer than the context is truncated and its last
kept position overwritten with EOT, because text encoders pool at the EOT position. Losing it
silently was a defect of the public Harmony code.

``MASK_TOKEN_ID`` is one id past the BPE vocabulary: masked-language modelling replaces tokens by
it, so the text model's embedding table has ``BPE_VOCAB_SIZE + 1 = 49,409`` rows. Because the mask
id is larger than EOT, CLIP's ``text.argmax(-1)`` trick no longer finds the EOT position of a
masked caption: locate it with ``(text == EOT_TOKEN_ID).int().argmax(-1)`` (:func:`eot_positions`).

Batch length. Captions hold ~12 real tokens while the context is 77 (32 in the quickstarts), and a
text tower's cost grows with the padded length L. A caption batch is therefore cut to
``L = min(ceil(longest / 8) * 8, context_length)`` (:func:`batch_length`, :func:`trim_to_batch_length`),
where ``longest`` counts SOT through EOT of the longest caption:

- the training collate (:func:`trim_caption_batch`, called by ``collate_skip_bad``) cuts the
  ``"text"`` key of every batch; samples themselves stay ``(context_length,)`` so that any
  collate (``default_collate`` included) can stack them;
- ``ClipTokenizer(pad_to="batch")`` tokenizes a list straight to the batch length (zero-shot
  prompts, retrieval captions; :class:`~hirl_like.evaluation.text_tower.TextTower` also cuts
  whatever its tokenizer returns).

Nothing the towers compute for a real token changes: positions keep the first L rows of the
position table, the causal mask is built for length L (a token never saw later positions), the
bidirectional mask hides padding keys, pooling reads the EOT position, and MLM masks are drawn
at the full context width and then cut (``pipelines/forwards/text.py``), so a seed masks the
same words at any L. Why a multiple of 8: tensor-core and vectorised kernels want it, and it
caps the distinct shapes a batch can take (10 for a 77-token context), which keeps
``torch.compile`` and cuDNN/cuBLAS autotuning caches small.

Real lengths come from the EOT position, not from ``id != PAD``: the pad id 0 is also the BPE id
of ``"!"``, so a caption may hold real zeros.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import torch

SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
PAD_TOKEN_ID = 0
BPE_VOCAB_SIZE = 49408
MASK_TOKEN_ID = 49408  # == BPE_VOCAB_SIZE: the one extra row of the text model's vocabulary
PAD_MULTIPLE = 8  # batch lengths are rounded up to this (see the module docstring)
TEXT_KEY = "text"  # the batch key holding (B, L) caption token ids


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


def caption_lengths(text: torch.Tensor, eot_token_id: int = EOT_TOKEN_ID) -> torch.Tensor:
    """(B, L) token ids -> (B,) real length of each caption: SOT through its first EOT, inclusive.

    A row without an EOT (not one of this tokenizer's, or already cut) counts as all real (L), so
    nothing is ever cut from it.
    """
    if text.dim() != 2:
        raise ValueError(f"caption token ids must be (B, L), got shape {tuple(text.shape)}.")
    is_eot = text == eot_token_id
    first = is_eot.int().argmax(dim=1) + 1
    return torch.where(is_eot.any(dim=1), first, torch.full_like(first, text.shape[1]))


def batch_length(longest: int, context_length: int, multiple: int = PAD_MULTIPLE) -> int:
    """``min(ceil(longest / multiple) * multiple, context_length)``: the padded length of a batch
    whose longest caption has ``longest`` real tokens (at least one multiple)."""
    if not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"the padding multiple must be an int >= 1, got {multiple!r}.")
    rounded = max(1, -(-int(longest) // multiple)) * multiple
    return min(rounded, int(context_length))


def trim_to_batch_length(
    text: torch.Tensor, multiple: int = PAD_MULTIPLE, eot_token_id: int = EOT_TOKEN_ID
) -> torch.Tensor:
    """(B, C) token ids padded to the context C -> (B, L) with ``L = batch_length(longest, C)``.

    Only columns past every caption's EOT go, so the result holds every real token. The cut is a
    contiguous copy (cheap: B x L ints) so that pinning and worker transfer see a plain tensor;
    ``text`` itself is returned when nothing can go. An empty batch is returned as is.
    """
    if text.dim() != 2 or text.shape[0] == 0:
        return text
    length = batch_length(int(caption_lengths(text, eot_token_id).max()), text.shape[1], multiple)
    return text if length >= text.shape[1] else text[:, :length].contiguous()


def trim_caption_batch(batch: Any, multiple: int = PAD_MULTIPLE) -> Any:
    """The collate step for captions: cut ``batch["text"]`` (B, C) to the batch length, in place.

    Called by the loaders' collate (``hirl_like.data.bad_samples.collate_skip_bad``) on every
    collated batch, in the worker processes. Anything that is not a dict with a 2-D integer
    ``"text"`` tensor is returned unchanged (vision-only batches, other dataset layouts).
    """
    if isinstance(batch, dict):
        text = batch.get(TEXT_KEY)
        if isinstance(text, torch.Tensor) and text.dim() == 2 and not text.is_floating_point():
            batch[TEXT_KEY] = trim_to_batch_length(text, multiple)
    return batch


class ClipTokenizer:
    """``texts -> LongTensor (n, L)`` with SOT/EOT, zero padding and EOT-preserving truncation.

    Args:
        context_length: C, the most tokens a caption keeps (SOT and EOT included); longer captions
            are cut to C with EOT in the last position.
        pad_to: ``"context"`` (default): L = C, a fixed shape, what datasets need so that samples
            stack. ``"batch"``: L = the longest caption of the call rounded up to a multiple of
            ``pad_multiple``, capped at C (:func:`batch_length`); for tokenizing whole batches at
            once (zero-shot prompts, retrieval captions). Both give the same ids in the first L
            columns.
        pad_multiple: the rounding of ``pad_to="batch"`` (8).

    Picklable and cheap to pickle: only the arguments travel to DataLoader workers, each of
    which builds (once) its own BPE tables.
    """

    def __init__(
        self, context_length: int = 77, pad_to: Literal["context", "batch"] = "context", pad_multiple: int = PAD_MULTIPLE
    ) -> None:
        if not isinstance(context_length, int) or context_length < 2:
            raise ValueError(
                f"context_length must be an int >= 2 (room for SOT and EOT), got {context_length!r}; "
                "CLIP uses 77."
            )
        if pad_to not in ("context", "batch"):
            raise ValueError(f"pad_to must be 'context' or 'batch', got {pad_to!r}.")
        if not isinstance(pad_multiple, int) or pad_multiple < 1:
            raise ValueError(f"pad_multiple must be an int >= 1, got {pad_multiple!r}.")
        self.context_length = context_length
        self.pad_to = pad_to
        self.pad_multiple = pad_multiple

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
        """Tokenize one string or a sequence of n strings -> LongTensor (n, L); L as ``pad_to`` says."""
        if isinstance(texts, str):
            texts = [texts]
        body = self.context_length - 2  # positions left between SOT and EOT
        rows = []
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"ClipTokenizer expects strings, got {type(text).__name__} at position {row}")
            rows.append([SOT_TOKEN_ID, *self.encode(text)[:body], EOT_TOKEN_ID])
        length = self.context_length
        if self.pad_to == "batch":
            length = batch_length(max((len(ids) for ids in rows), default=2), self.context_length, self.pad_multiple)
        out = torch.full((len(rows), length), PAD_TOKEN_ID, dtype=torch.long)
        for row, ids in enumerate(rows):
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Tokenizers pickled before pad_to existed (e.g. inside old checkpoints) unpickle as "context".
        self.__dict__.update({"pad_to": "context", "pad_multiple": PAD_MULTIPLE, **state})

    def __repr__(self) -> str:
        extra = f", pad_to={self.pad_to!r}" if self.pad_to != "context" else ""
        return f"ClipTokenizer(context_length={self.context_length}{extra})"
