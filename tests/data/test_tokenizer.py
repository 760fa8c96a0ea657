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
