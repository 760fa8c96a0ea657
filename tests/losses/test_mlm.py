import math

import pytest
import torch

from hirl_like.losses.mlm import MLMLoss, mask_tokens
from tests.losses._reference import logsumexp, row

SOT, EOT, MASK, PAD = 49406, 49407, 49408, 0


def _captions(b=256, length=77, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 49406, (b, length), generator=gen)
    lengths = torch.randint(3, length + 1, (b,), generator=gen)
    pos = torch.arange(length)[None]
    tokens[:, 0] = SOT
    tokens[pos == (lengths[:, None] - 1)] = EOT
    tokens[pos >= lengths[:, None]] = PAD
    return tokens


def test_mask_tokens_skips_specials_and_padding_and_hits_the_rate():
    tokens = _captions()
    masked, mask = mask_tokens(tokens, 0.2, MASK, (SOT, EOT), PAD, torch.Generator().manual_seed(1))
    real = (tokens != PAD) & (tokens != SOT) & (tokens != EOT)
    assert not mask[~real].any()
    assert torch.equal(masked[mask], torch.full_like(masked[mask], MASK))
    assert torch.equal(masked[~mask], tokens[~mask])
    rate = mask.sum().item() / real.sum().item()  # ~10k real tokens: std of the rate ~0.004
    assert abs(rate - 0.2) < 0.02


def test_mask_tokens_is_reproducible_and_handles_extremes():
    tokens = _captions(8, 10)
    a = mask_tokens(tokens, 0.5, MASK, (SOT, EOT), generator=torch.Generator().manual_seed(3))[1]
    b = mask_tokens(tokens, 0.5, MASK, (SOT, EOT), generator=torch.Generator().manual_seed(3))[1]
    assert torch.equal(a, b)
    real = (tokens != PAD) & (tokens != SOT) & (tokens != EOT)
    assert torch.equal(mask_tokens(tokens, 1.0, MASK, (SOT, EOT))[1], real)
    assert not mask_tokens(tokens, 0.0, MASK, (SOT, EOT))[1].any()
    with pytest.raises(ValueError, match="mask_prob"):
        mask_tokens(tokens, 1.2, MASK, (SOT, EOT))


def test_mlm_loss_matches_naive():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, 7, generator=gen, requires_grad=True)
    targets = torch.randint(0, 7, (2, 5), generator=gen)
    mask = torch.tensor([[0, 1, 1, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    out = MLMLoss()(logits, targets, mask)
    terms = [logsumexp(row(logits[i, j])) - logits[i, j, targets[i, j]]
             for i in range(2) for j in range(5) if mask[i, j]]
    ref = sum(terms) / len(terms)  # averaged over all masked tokens of the batch
    torch.testing.assert_close(out["loss"], ref)
    torch.testing.assert_close(torch.autograd.grad(out["loss"], logits)[0], torch.autograd.grad(ref, logits)[0])


def test_uniform_logits_give_log_vocab():
    mask = torch.tensor([[True, False, True]])
    out = MLMLoss()(torch.zeros(1, 3, 50), torch.tensor([[3, 4, 5]]), mask)
    assert out["loss"].item() == pytest.approx(math.log(50), rel=1e-6)


def test_nothing_masked_gives_zero_that_backpropagates():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    out = MLMLoss()(logits, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool))
    out["loss"].backward()
    assert out["loss"].item() == 0.0 and logits.grad is not None and logits.grad.abs().sum() == 0
