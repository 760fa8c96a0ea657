"""Zero-shot prompts and retrieval captions run at their batch length (issue 18): the text tower
cuts whatever its tokenizer returns, and the class embeddings / caption embeddings equal those of
prompts padded to the full context."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hirl_like.cli.eval_retrieval import encode_captions
from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.evaluation.text_tower import TextTower
from hirl_like.evaluation.zeroshot import build_zeroshot_classifier
from hirl_like.models.text import TextTransformer

CLASSES = ["zero", "one", "two", "three"]
TEMPLATES = ["a photo of the number {}.", "{}", "a blurry photo of a handwritten digit, the number {}."]


def tower(causal: bool, pad_to: str = "context") -> TextTower:
    torch.manual_seed(0)
    text = TextTransformer(context_length=77, width=32, layers=2, heads=4, embed_dim=16, causal=causal)
    return TextTower(text, nn.Linear(24, 16, bias=False), ClipTokenizer(77, pad_to=pad_to))


def spy_lengths(model: nn.Module) -> list[int]:
    """The token length of every later call of ``model`` (a forward pre-hook records it)."""
    lengths: list[int] = []
    model.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    return lengths


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("pad_to", ["context", "batch"])
def test_zeroshot_classifier_equals_the_full_context_one(causal, pad_to):
    t = tower(causal, pad_to)
    # the reference: the model itself on prompts padded to all 77 positions
    with torch.no_grad():
        reference = build_zeroshot_classifier(lambda ids: t.text(ids), ClipTokenizer(77), CLASSES, TEMPLATES, batch_size=5)
    lengths = spy_lengths(t.text)
    classifier = build_zeroshot_classifier(t.encode_text, t.tokenizer, CLASSES, TEMPLATES, batch_size=5)
    torch.testing.assert_close(classifier, reference, atol=1e-5, rtol=1e-5)
    assert lengths and max(lengths) == 16 and all(n % 8 == 0 for n in lengths)


def test_retrieval_captions_run_at_their_batch_length():
    t = tower(True)
    captions = [f"a photo of the number {c}" for c in CLASSES] + ["three"]
    with torch.no_grad():
        reference = t.text(ClipTokenizer(77)(captions))
    lengths = spy_lengths(t.text)
    torch.testing.assert_close(encode_captions(t, captions, batch_size=4), reference, atol=1e-5, rtol=1e-5)
    assert lengths == [8, 8]  # two calls; a batch of one caption too
