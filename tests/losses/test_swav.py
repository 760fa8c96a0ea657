"""SwAV: Sinkhorn-Knopp against a loop implementation, its marginals, the swapped-prediction loss
over multi-crop (with and without the queue) against a loop reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from hirl_like.losses.swav import SwAVLoss, normalize_prototypes_, sinkhorn_knopp
from hirl_like.registry import LOSSES
from tests.losses._reference import log_softmax, row


def naive_sinkhorn(scores, eps, iters):
    """SwAV's algorithm on a python K x N list of floats: Q = exp(S^T / eps), Q /= sum Q; per iteration
    rows -> 1/K then columns -> 1/N; finally Q *= N. Returns the N x K transpose (list of lists)."""
    n, k = len(scores), len(scores[0])
    q = [[math.exp(scores[b][p] / eps) for b in range(n)] for p in range(k)]
    total = sum(sum(r) for r in q)
    q = [[x / total for x in r] for r in q]
    for _ in range(iters):
        for p in range(k):
            s = sum(q[p])
            q[p] = [x / s / k for x in q[p]]
        for b in range(n):
            s = sum(q[p][b] for p in range(k))
            for p in range(k):
                q[p][b] = q[p][b] / s / n
    return [[q[p][b] * n for p in range(k)] for b in range(n)]


def cosine_scores(n, k, d, gen):
    z = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(k, d, generator=gen, dtype=torch.float64), dim=1)
    return z @ c.T


@pytest.mark.parametrize("iters", [1, 3, 7])
def test_sinkhorn_matches_naive_loop(iters):
    gen = torch.Generator().manual_seed(0)
    s = cosine_scores(6, 4, 5, gen)
    ref = torch.tensor(naive_sinkhorn(s.tolist(), 0.05, iters), dtype=torch.float32)
    torch.testing.assert_close(sinkhorn_knopp(s.float(), 0.05, iters), ref, rtol=1e-4, atol=1e-7)


def test_sinkhorn_marginals():
    gen = torch.Generator().manual_seed(1)
    n, k = 12, 5
    s = cosine_scores(n, k, 8, gen).float()
    q = sinkhorn_knopp(s, 0.05, 3)
    assert q.shape == (n, k) and (q > 0).all()
    # after the final rescale every sample's codes sum to exactly 1 (SwAV's columns of the K x N Q)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(n), rtol=0, atol=1e-5)
    # the prototype marginals are only near equipartition N/K after 3 iterations (the last step
    # rescaled the samples, undoing the exact 1/K of the prototype step before it) ...
    assert not torch.allclose(q.sum(dim=0), torch.full((k,), n / k), rtol=1e-3, atol=1e-3)
    # ... and exact at convergence, with the sample marginals still exact
    q = sinkhorn_knopp(s, 0.05, 500)
    torch.testing.assert_close(q.sum(dim=0), torch.full((k,), n / k), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(n), rtol=0, atol=1e-5)


def test_sinkhorn_output_is_a_diagonal_scaling_of_the_kernel():
    # Q[b, k] = a_b exp(S[b, k] / eps) c_k: log Q - S / eps is a sum of a row and a column term
    gen = torch.Generator().manual_seed(5)
    s = cosine_scores(7, 4, 6, gen)
    resid = sinkhorn_knopp(s.float(), 0.05, 3).double().log() - s / 0.05
    resid = resid - resid.mean(dim=1, keepdim=True) - resid.mean(dim=0, keepdim=True) + resid.mean()
    torch.testing.assert_close(resid, torch.zeros_like(resid), rtol=0, atol=1e-4)


def test_sinkhorn_is_shift_invariant_and_does_not_overflow():
    gen = torch.Generator().manual_seed(2)
    s = cosine_scores(6, 4, 3, gen).float()
    torch.testing.assert_close(sinkhorn_knopp(s + 7.0), sinkhorn_knopp(s), rtol=1e-5, atol=1e-7)
    big = sinkhorn_knopp(s + 1000.0)  # exp(1000 / 0.05) overflows without the max shift
    assert torch.isfinite(big).all()
    # (only float32 rounding of s + 1000 differs: its ulp is 6e-5)
    torch.testing.assert_close(big, sinkhorn_knopp(s), rtol=5e-3, atol=2e-4)


def test_sinkhorn_has_no_gradient():
    s = torch.randn(4, 3, requires_grad=True)
    assert not sinkhorn_knopp(s).requires_grad


def naive_swav(scores, v, crops, tau, eps, iters, past=None):
    """sum_{c in crops} sum_{u != c} -(1/B) sum_b sum_k q_c[b,k] log softmax(s_u[b] / tau)_k / (V-1) / |crops|.

    past: {i: (L_i, K) scores of the queue rows} prepended before Sinkhorn for assigned crop i."""
    b = scores.shape[0] // v
    total = 0.0
    for i, c in enumerate(crops):
        target = scores[c * b:(c + 1) * b].detach().double().tolist()
        if past is not None:
            target = past[i].double().tolist() + target
        codes = naive_sinkhorn(target, eps, iters)[-b:]
        sub = 0.0
        for u in range(v):
            if u == c:
                continue
            for j in range(b):
                logp = log_softmax([x / tau for x in row(scores[u * b + j])])
                sub = sub - sum(codes[j][kk] * logp[kk] for kk in range(len(logp))) / b
        total = total + sub / (v - 1)
    return total / len(crops)


@pytest.mark.parametrize("v,crops", [(2, (0, 1)), (4, (0, 1)), (3, (1,))])
def test_loss_matches_naive_multicrop_and_gradients(v, crops):
    gen = torch.Generator().manual_seed(3)
    b, k = 3, 5
    scores = cosine_scores(v * b, k, 4, gen).float().requires_grad_(True)
    out = SwAVLoss(num_crops=v, crops_for_assign=crops)(scores)
    ref = naive_swav(scores, v, crops, 0.1, 0.05, 3)
    torch.testing.assert_close(out["loss"], ref.float(), rtol=1e-4, atol=1e-5)
    # the codes are constants: the gradient is that of the predictions only
    torch.testing.assert_close(torch.autograd.grad(out["loss"], scores)[0],
                               torch.autograd.grad(ref, scores)[0].float(), rtol=1e-3, atol=1e-5)


def test_queue_fills_newest_first_then_enlarges_only_the_assignment():
    gen = torch.Generator().manual_seed(4)
    v, b, k, d, length = 3, 2, 4, 5, 4
    loss_fn = SwAVLoss(num_crops=v, queue_length=length, feat_dim=d)
    protos = F.normalize(torch.randn(k, d, generator=gen), dim=1)
    history = []
    for step in range(3):
        emb = F.normalize(torch.randn(v * b, d, generator=gen), dim=1)
        scores = (emb @ protos.T).requires_grad_(True)
        queue_before = loss_fn.queue.clone()
        out = loss_fn(scores, emb, protos)
        if step < 2:  # not full yet: plain SwAV
            ref = naive_swav(scores, v, (0, 1), 0.1, 0.05, 3)
        else:  # full: the past rows (newest first) are prepended for the codes only
            past = {i: queue_before[i] @ protos.T for i in range(2)}
            ref = naive_swav(scores, v, (0, 1), 0.1, 0.05, 3, past=past)
            assert not torch.allclose(out["loss"], naive_swav(scores, v, (0, 1), 0.1, 0.05, 3).float())
        torch.testing.assert_close(out["loss"], ref.float(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.autograd.grad(out["loss"], scores)[0],
                                   torch.autograd.grad(ref, scores)[0].float(), rtol=1e-3, atol=1e-5)
        history.append(emb)
        # the queue holds the assigned crops' embeddings, newest block first
        for i, c in enumerate((0, 1)):
            blocks = [h[c * b:(c + 1) * b] for h in reversed(history)][: length // b]
            expect = torch.cat(blocks + [torch.zeros(length - b * len(blocks), d)])
            torch.testing.assert_close(loss_fn.queue[i], expect)
        assert int(loss_fn.queue_filled) == min(b * (step + 1), length)


def test_use_queue_false_leaves_the_queue_alone():
    loss_fn = SwAVLoss(queue_length=4, feat_dim=3)
    emb = F.normalize(torch.randn(4, 3), dim=1)
    loss_fn(emb @ emb[:2].T, use_queue=False)  # no embeddings needed either
    assert int(loss_fn.queue_filled) == 0 and not loss_fn.queue.any()
    assert set(loss_fn.state_dict()) == {"queue", "queue_filled"}


def test_queue_inputs_are_checked():
    loss_fn = SwAVLoss(queue_length=3, feat_dim=3)
    emb = F.normalize(torch.randn(4, 3), dim=1)
    with pytest.raises(ValueError, match="embeddings and prototypes"):
        loss_fn(emb @ emb[:2].T)
    with pytest.raises(ValueError, match="multiple of"):  # 3 rows, B = 2
        loss_fn(emb @ emb[:2].T, emb, emb[:2])
    with pytest.raises(ValueError, match="feat_dim"):
        loss_fn(emb @ emb[:2].T, emb[:, :2], emb[:2, :2])


def test_normalize_prototypes_in_place():
    w = torch.randn(5, 3)
    same = normalize_prototypes_(w)
    assert same is w
    torch.testing.assert_close(w.norm(dim=1), torch.ones(5))


def test_defaults_follow_swav():
    loss_fn = LOSSES.build({"name": "SwAVLoss"})
    assert (loss_fn.temperature, loss_fn.epsilon, loss_fn.sinkhorn_iterations) == (0.1, 0.05, 3)
    assert loss_fn.crops_for_assign == (0, 1) and loss_fn.queue_length == 0


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"sinkhorn_iterations": 0}, "sinkhorn_iterations"),
        ({"num_crops": 1, "crops_for_assign": [0]}, "num_crops"),
        ({"crops_for_assign": [0, 2]}, "crops_for_assign"),
        ({"crops_for_assign": [1, 1]}, "crops_for_assign"),
        ({"queue_length": -1}, "queue_length"),
    ],
)
def test_bad_arguments_name_the_argument(cfg, match):
    with pytest.raises(ValueError, match=match):
        LOSSES.build({"name": "SwAVLoss", **cfg})


def test_scores_must_split_into_crops():
    with pytest.raises(ValueError, match="num_crops"):
        SwAVLoss(num_crops=2)(torch.randn(5, 3))
