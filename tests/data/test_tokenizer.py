import pickle

import torch

from hirl_like.data.tokenizer import (
    BPE_VOCAB_SIZE,
    EOT_TOKEN_ID,
    MASK_TOKEN_ID,
    PAD_TOKEN_ID,
    SOT_TOKEN_ID,
    ClipTokenizer,
)


def test_constants():
    assert (SOT_TOKEN_ID, EOT_TOKEN_ID, PAD_TOKEN_ID) == (49406, 49407, 0)
    assert BPE_VOCAB_SIZE == 49408 and MASK_TOKEN_ID == BPE_VOCAB_SIZE
    assert ClipTokenizer().vocab_size == 49409


def test_shapes_and_ids():
    tok = ClipTokenizer(context_length=16)
    out = tok(["a photo of a cat.", "dog"])
    assert out.shape == (2, 16) and out.dtype == torch.long
    # Known CLIP BPE ids: "a"=320, "photo"=1125, "of"=539, "cat"=2368, "."=269.
    assert out[0, :8].tolist() == [SOT_TOKEN_ID, 320, 1125, 539, 320, 2368, 269, EOT_TOKEN_ID]
    assert (out[0, 8:] == PAD_TOKEN_ID).all()
    assert tok("dog").shape == (1, 16)
    assert torch.equal(tok("dog")[0], out[1])
    # The EOT position is the argmax (what text encoders pool on).
    assert out[1].argmax().item() == 2 and out[1, 2] == EOT_TOKEN_ID
    assert tok.decode(out[0]) == "a photo of a cat ."


def test_truncation_keeps_eot():
    tok = ClipTokenizer(context_length=8)
    long = " ".join(["word"] * 50)
    out = tok([long, "a b"])[0]
    ids = tok.encode(long)
    assert len(ids) > 8
    assert out.tolist() == [SOT_TOKEN_ID, *ids[:6], EOT_TOKEN_ID]
    assert (out != PAD_TOKEN_ID).all()


def test_pickle_roundtrip():
    tok = ClipTokenizer(context_length=20)
    blob = pickle.dumps(tok)
    assert len(blob) < 1000  # the BPE tables are not shipped to workers
    tok2 = pickle.loads(blob)
    assert tok2.context_length == 20
    assert torch.equal(tok2("a handwritten digit seven."), tok("a handwritten digit seven."))


def test_bad_arguments():
    import pytest

    with pytest.raises(ValueError, match="context_length"):
        ClipTokenizer(context_length=1)
    with pytest.raises(ValueError, match="strings"):
        ClipTokenizer()([3])


def test_eot_positions_with_mask_tokens():
    from hirl_like.data.tokenizer import eot_positions

    tok = ClipTokenizer(context_length=10)
    text = tok(["a photo of a cat.", "dog"])
    masked = text.clone()
    masked[0, 2] = MASK_TOKEN_ID  # larger than EOT: plain argmax would point here
    assert masked[0].argmax().item() == 2
    assert eot_positions(masked).tolist() == [7, 2]
    assert eot_positions(text).tolist() == text.argmax(-1).tolist()


# -- batch length (issue 18): pad to the longest caption of the batch, rounded up to 8 ---------------
def test_batch_length_rounds_up_to_eight_and_caps_at_the_context():
    from hirl_like.data.tokenizer import batch_length

    assert [batch_length(n, 77) for n in (2, 8, 9, 16, 17, 72, 73, 77)] == [8, 8, 16, 16, 24, 72, 77, 77]
    assert batch_length(12, 10) == 10  # capped
    assert batch_length(5, 77, multiple=1) == 5
    import pytest

    with pytest.raises(ValueError, match="multiple"):
        batch_length(5, 77, multiple=0)


def test_caption_lengths_count_sot_to_eot_and_real_zero_ids():
    from hirl_like.data.tokenizer import caption_lengths

    tok = ClipTokenizer(context_length=16)
    text = tok(["a photo of a cat.", "dog", "a b c"])
    text[2, 2] = PAD_TOKEN_ID  # id 0 is also a real BPE token ("!" inside a word): not the end of a caption
    assert caption_lengths(text).tolist() == [8, 3, 5]
    no_eot = torch.full((1, 16), 5)
    assert caption_lengths(no_eot).tolist() == [16]  # a row without EOT is never cut


def test_trim_keeps_every_real_token_and_only_drops_padding():
    from hirl_like.data.tokenizer import trim_to_batch_length

    tok = ClipTokenizer(context_length=32)
    full = tok(["a photo of a cat.", "dog", "a b c d e f g h i"])  # longest: 11 tokens -> 16
    cut = trim_to_batch_length(full)
    assert cut.shape == (3, 16) and cut.is_contiguous()
    assert torch.equal(cut, full[:, :16]) and (full[:, 16:] == PAD_TOKEN_ID).all()
    assert trim_to_batch_length(cut) is cut  # idempotent
    assert trim_to_batch_length(full[:0]).shape == (0, 32)


def test_pad_to_batch_equals_context_padding_cut_to_the_batch_length():
    captions = ["a photo of the number seven.", "two", "a blurry photo of a handwritten digit"]
    fixed = ClipTokenizer(context_length=77)(captions)
    batch = ClipTokenizer(context_length=77, pad_to="batch")(captions)
    assert batch.shape == (3, 16)
    assert torch.equal(batch, fixed[:, :16])
    one = ClipTokenizer(context_length=77, pad_to="batch")("dog")  # a batch of one caption
    assert one.shape == (1, 8) and torch.equal(one, ClipTokenizer(77)("dog")[:, :8])


def test_pad_to_batch_truncation_keeps_the_end_token():
    long = " ".join(["word"] * 100)
    tok = ClipTokenizer(context_length=20, pad_to="batch")
    out = tok([long, "a b"])
    assert out.shape == (2, 20)  # capped at the context, not rounded to 24
    assert out[0, -1] == EOT_TOKEN_ID and out[0, 0] == SOT_TOKEN_ID
    assert torch.equal(out, ClipTokenizer(context_length=20)([long, "a b"]))


def test_trim_caption_batch_is_the_collate_step():
    from torch.utils.data import default_collate

    from hirl_like.data.bad_samples import BadSample, collate_skip_bad
    from hirl_like.data.tokenizer import trim_caption_batch

    tok = ClipTokenizer(context_length=32)
    samples = [{"text": tok(c)[0], "index": i} for i, c in enumerate(["a cat", "a photo of the number three."])]
    batch = collate_skip_bad(samples)
    assert batch["text"].shape == (2, 16)
    assert torch.equal(batch["text"], default_collate(samples)["text"][:, :16])
    # with a bad sample dropped the batch is cut to its own longest caption
    bad = BadSample(index=9, path="x.jpg", reason="corrupt")
    assert collate_skip_bad([samples[0], bad])["text"].shape == (1, 8)
    # nothing else is touched: no text key, float tensors, non-dict batches
    assert trim_caption_batch({"image": torch.zeros(2, 3)})["image"].shape == (2, 3)
    assert trim_caption_batch([1, 2]) == [1, 2]


def test_old_pickles_without_pad_to_load_as_context_padding():
    tok = ClipTokenizer(context_length=12)
    state = {"context_length": 12}  # what a tokenizer pickled before pad_to existed holds
    old = ClipTokenizer.__new__(ClipTokenizer)
    old.__setstate__(state)
    assert old.pad_to == "context" and torch.equal(old("dog"), tok("dog"))
    assert "pad_to" not in repr(tok) and "batch" in repr(ClipTokenizer(12, pad_to="batch"))
