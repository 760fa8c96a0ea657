"""Masked language modelling: token masking and the cross-entropy over masked positions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.registry import LOSSES


def mask_tokens(
    tokens: Tensor,
    mask_prob: float,
    mask_token_id: int,
    special_token_ids: Sequence[int],
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Mask each real token independently with probability ``mask_prob`` (Harmony: 0.2).

    Real = not ``pad_token_id`` and not in ``special_token_ids`` (e.g. start / end of text). A masked
    token is replaced by ``mask_token_id``; there is no 80/10/10 split (Harmony's choice).

    Args:
        tokens: (B, L) int64 ids. generator: optional, on ``tokens.device``, for reproducible masks.
    Returns:
        (masked_tokens (B, L) int64, mask (B, L) bool with True where a token was replaced).
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must lie in [0, 1], got {mask_prob}.")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"tokens must be an integer tensor of ids, got dtype {tokens.dtype}.")
    excluded = torch.tensor([pad_token_id, *special_token_ids], dtype=tokens.dtype, device=tokens.device)
    eligible = ~torch.isin(tokens, excluded)
    draws = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    mask = eligible & (draws < mask_prob)
    return tokens.masked_fill(mask, mask_token_id), mask


@LOSSES.register()
class MLMLoss(nn.Module):
    """``loss = sum_{masked (b, l)} CE(logits[b, l], targets[b, l]) / #masked`` (float32).

    Only the masked positions go through log_softmax (vocabularies are large). With nothing masked
    the loss is an exact zero that is still connected to ``logits``, so backward works everywhere.
    """

    def forward(self, logits: Tensor, targets: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """logits: (B, L, V); targets: (B, L) original ids; mask: (B, L) bool. Returns {"loss"}."""
        if logits.shape[:-1] != targets.shape or mask.shape != targets.shape:
            raise ValueError(
                f"shape mismatch: logits {tuple(logits.shape)}, targets {tuple(targets.shape)}, "
                f"mask {tuple(mask.shape)}; expected (B, L, V), (B, L), (B, L)."
            )
        mask = mask.bool()
        total = F.cross_entropy(logits[mask].float(), targets[mask], reduction="sum")
        loss = total / mask.sum().clamp(min=1)  # empty selection: 0, still tied to logits
        return {"loss": loss}
