"""The text tower gives the same results on captions cut to the batch length as on captions padded
to the full context (issue 18): features of real tokens, pooled embeddings and gradients."""

from __future__ import annotations

import pytest
import torch

from hirl_like.data.tokenizer import EOT_TOKEN_ID, ClipTokenizer, trim_to_batch_length
from hirl_like.models.text import TextTransformer

CONTEXT = 32
CAPTIONS = ["a photo of the number seven.", "two", "a blurry photo of a small handwritten digit", "dog"]


def tower(causal: bool) -> TextTransformer:
    torch.manual_seed(0)
    return TextTransformer(context_length=CONTEXT, width=32, layers=3, heads=4, embed_dim=16, causal=causal)


def full_and_cut(captions=CAPTIONS) -> tuple[torch.Tensor, torch.Tensor]:
    full = ClipTokenizer(context_length=CONTEXT)(captions)
    cut = trim_to_batch_length(full)
    return full, cut


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_real_token_features_and_pooled_embedding_do_not_depend_on_padding(causal):
    model = tower(causal).eval()
    full, cut = full_and_cut()
    assert cut.shape[1] == 16 < full.shape[1]
    with torch.no_grad():
        f_full, f_cut = model.forward_tokens(full), model.forward_tokens(cut)
        valid = model.valid_mask(cut)  # SOT .. EOT of each caption
        torch.testing.assert_close(f_cut[valid], f_full[:, : cut.shape[1]][valid], atol=1e-5, rtol=1e-5)
        # EOS pooling: the end-token position is the same in both, and so is the embedding
        assert torch.equal(model.eot_positions(full), model.eot_positions(cut))
        torch.testing.assert_close(model(cut), model(full), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_gradients_are_those_of_the_full_context(causal):
    full, cut = full_and_cut()
    grads = []
    for tokens in (full, cut):
        model = tower(causal).train()
        target = torch.randn(len(CAPTIONS), 16, generator=torch.Generator().manual_seed(1))
        loss = ((model(tokens) - target) ** 2).sum()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-4, msg=name)
    # position rows past the batch length get no gradient in either run
    assert (grads[0]["positional_embedding"][cut.shape[1]:] == 0).all()


def test_positions_are_the_first_rows_of_the_table():
    model = tower(True).eval()
    _, cut = full_and_cut()
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args, kwargs: seen.update(x=args[0]), with_kwargs=True)
    with torch.no_grad():
        model.forward_tokens(cut)
    expected = model.token_embedding(cut) + model.positional_embedding[: cut.shape[1]]
    torch.testing.assert_close(seen["x"], expected)


def test_over_long_caption_is_truncated_with_its_end_token_and_a_batch_of_one():
    long = " ".join(["seven"] * 60)
    model = tower(True).eval()
    full, cut = full_and_cut([long])  # a batch of one over-long caption: cut == full (capped at the context)
    assert cut.shape == (1, CONTEXT) and cut[0, -1] == EOT_TOKEN_ID
    one_full, one_cut = full_and_cut(["dog"])  # a batch of one short caption: 8 columns
    assert one_cut.shape == (1, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(one_cut), model(one_full), atol=1e-5, rtol=1e-5)
        mixed_full, mixed_cut = full_and_cut([long, "dog"])
        assert mixed_cut.shape[1] == CONTEXT
        torch.testing.assert_close(model(mixed_cut), model(mixed_full), atol=1e-5, rtol=1e-5)
        assert model.eot_positions(mixed_cut).tolist() == [CONTEXT - 1, 2]


def test_longer_than_the_context_is_refused():
    model = tower(True)
    with pytest.raises(ValueError, match="context length"):
        model.forward_tokens(torch.zeros(1, CONTEXT + 1, dtype=torch.long))
