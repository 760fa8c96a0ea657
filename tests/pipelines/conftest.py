"""Tiny models and batches shared by the pipeline tests."""

from __future__ import annotations

import pytest
import torch

from hirl_like.data.tokenizer import ClipTokenizer

TINY_VISION = {"name": "vit", "arch": "vit_tiny", "img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}
TINY_TEXT = {"name": "text_transformer", "width": 64, "layers": 2, "heads": 2, "context_length": 16, "causal": False}
TINY_OBJECTIVE_ARGS = {
    "ibot": {"out_dim": 128, "patch_out_dim": 128, "head_hidden_dim": 64, "head_bottleneck_dim": 32},
    "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    "mlm": {"decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2},
    "text_distill": {"out_dim": 64, "head_hidden_dim": 64, "head_bottleneck_dim": 32},
    "clip": {"soft_targets": True},
}


def tiny_batch(batch_size: int = 4, local_crops: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    words = ["a photo of the number zero", "a digit one", "the number two", "a handwritten three"]
    captions = [words[i % len(words)] for i in range(batch_size)]
    return {
        "global_crops": [torch.randn(batch_size, 3, 32, 32, generator=g) for _ in range(2)],
        "local_crops": [torch.randn(batch_size, 3, 16, 16, generator=g) for _ in range(local_crops)],
        "text": ClipTokenizer(context_length=16)(captions),
        "label": torch.arange(batch_size),
    }


@pytest.fixture
def batch() -> dict:
    return tiny_batch()
