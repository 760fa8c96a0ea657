"""MoCo v2 (queue InfoNCE), MomentumQueue and MoCo v3 (2T-scaled symmetric loss) against loop references."""

import math

import pytest
import torch

from hirl_like.losses.moco import MoCoV2Loss, MoCoV3Loss, MomentumQueue, moco_infonce
from hirl_like.registry import LOSSES
from tests.losses._reference import dot, logsumexp


def unit(v):
    return v / torch.sqrt(dot(v, v))


def naive_moco_v2(q, k, queue, tau):
    """mean_i [ logsumexp([q_i.k_i, q_i.n_1, ..., q_i.n_K] / tau) - q_i.k_i / tau ], keys constant."""
    b = q.shape[0]
    total = 0.0
    for i in range(b):
        qi, ki = unit(q[i]), unit(k[i].detach())
        logits = [dot(qi, ki) / tau] + [dot(qi, queue[j]) / tau for j in range(queue.shape[0])]
        total = total + (logsumexp(logits) - logits[0]) / b
    return total


def naive_moco_v3(q1, q2, k1, k2, tau):
    """sum over (q1, k2), (q2, k1) of 2*tau * mean_i [ logsumexp_j(q_i.k_j / tau) - q_i.k_i / tau ]."""
    b = q1.shape[0]
    total = 0.0
    for q, k in ((q1, k2), (q2, k1)):
        term = 0.0
        for i in range(b):
            logits = [dot(unit(q[i]), unit(k[j].detach())) / tau for j in range(b)]
            term = term + (logsumexp(logits) - logits[i]) / b
        total = total + 2 * tau * term
    return total


def naive_ring(rows, old_queue, ptr):
    """A python-list ring buffer: write each row at ptr, ptr+1, ... (mod K)."""
    queue = [old_queue[j].clone() for j in range(old_queue.shape[0])]
    for r in rows:
        queue[ptr] = unit(r)
        ptr = (ptr + 1) % len(queue)
    return torch.stack(queue), ptr


# ---------------------------------------------------------------------------------------- MoCo v2
def test_v2_matches_naive_loss_and_gradient_and_keys_get_none():
    gen = torch.Generator().manual_seed(0)
    loss_fn = MoCoV2Loss(temperature=0.2, dim=4, queue_size=7)
    queue_before = loss_fn.queue.queue.clone()
    q = torch.randn(3, 4, generator=gen, requires_grad=True)
    k = torch.randn(3, 4, generator=gen, requires_grad=True)
    out = loss_fn(q, k)
    ref = naive_moco_v2(q, k, queue_before, 0.2)  # the loss uses the queue from BEFORE this step's keys
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-6)
    g_q, g_k = torch.autograd.grad(out["loss"], (q, k), allow_unused=True)
    torch.testing.assert_close(g_q, torch.autograd.grad(ref, q)[0], rtol=1e-4, atol=1e-6)
    assert g_k is None  # no gradient to the keys
    assert not out["acc"].requires_grad


def test_v2_enqueues_the_normalised_keys_after_the_loss():
    gen = torch.Generator().manual_seed(1)
    loss_fn = MoCoV2Loss(dim=3, queue_size=5)
    before = loss_fn.queue.queue.clone()
    k = torch.randn(2, 3, generator=gen)
    loss_fn(torch.randn(2, 3, generator=gen), k)
    expected, ptr = naive_ring(k, before, 0)
    torch.testing.assert_close(loss_fn.queue.queue, expected)
    assert int(loss_fn.queue.ptr) == ptr == 2


def test_v2_known_value_with_orthogonal_negatives():
    # q = k, every negative orthogonal to q: loss = log(1 + K e^{-1/T})
    t, kq = 0.5, 4
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]])
    negatives = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]]).repeat(kq, 1)
    loss, logits = moco_infonce(q, q.clone(), negatives, t)
    assert logits.shape == (1, 1 + kq)
    assert loss.item() == pytest.approx(math.log(1 + kq * math.exp(-1 / t)), rel=1e-6)


def test_v2_accuracy_in_percent():
    loss_fn = MoCoV2Loss(dim=2, queue_size=3)
    loss_fn.queue.queue.copy_(torch.tensor([[0.0, 1.0]] * 3))
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert loss_fn(q, q.clone())["acc"].item() == pytest.approx(100.0)
    loss_fn.queue.queue.copy_(torch.tensor([[0.0, 1.0]] * 3))
    assert loss_fn(q, torch.tensor([[-1.0, 0.0], [-1.0, 0.0]]))["acc"].item() == pytest.approx(0.0)


def test_v2_defaults():
    loss_fn = LOSSES.build({"name": "MoCoV2Loss"})
    assert loss_fn.temperature == 0.2
    assert loss_fn.queue.queue.shape == (65536, 128)


# ----------------------------------------------------------------------------------- MomentumQueue
def test_queue_is_a_buffer_of_unit_rows():
    mq = MomentumQueue(dim=6, size=10)
    assert set(mq.state_dict()) == {"queue", "ptr"}
    assert dict(mq.named_buffers()).keys() == {"queue", "ptr"} and not list(mq.parameters())
    torch.testing.assert_close(mq.queue.norm(dim=1), torch.ones(10))


def test_queue_pointer_wraps_around_like_a_ring_buffer():
    gen = torch.Generator().manual_seed(2)
    mq = MomentumQueue(dim=3, size=5)
    expected, ptr = mq.queue.clone(), 0
    for n in (2, 2, 3, 5, 1):  # 2+2+3 crosses the end; 5 = a full turn
        keys = 3 * torch.randn(n, 3, generator=gen)
        mq.enqueue(keys)
        expected, ptr = naive_ring(keys, expected, ptr)
        torch.testing.assert_close(mq.queue, expected)
        assert int(mq.ptr) == ptr
    torch.testing.assert_close(mq.queue.norm(dim=1), torch.ones(5))


def test_queue_refuses_more_keys_than_it_holds_and_wrong_dim():
    mq = MomentumQueue(dim=3, size=4)
    with pytest.raises(ValueError, match="size 4"):
        mq.enqueue(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        mq.enqueue(torch.randn(2, 4))


# ---------------------------------------------------------------------------------------- MoCo v3
@pytest.mark.parametrize("tau", [0.2, 1.0])
def test_v3_matches_naive_loss_and_gradients(tau):
    gen = torch.Generator().manual_seed(3)
    q1, q2, k1, k2 = (torch.randn(4, 5, generator=gen, requires_grad=True) for _ in range(4))
    out = MoCoV3Loss(temperature=tau)(q1, q2, k1, k2)
    ref = naive_moco_v3(q1, q2, k1, k2, tau)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out["loss"], (q1, q2, k1, k2), allow_unused=True)
    ref_grads = torch.autograd.grad(ref, (q1, q2))
    for a, b in zip(grads[:2], ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert grads[2] is None and grads[3] is None
    assert not out["acc"].requires_grad


def test_v3_identical_keys_give_4T_log_B():
    # all q, k equal: every logit is 1/T, each CE = log B, loss = 2 * 2T * log B
    b, tau = 5, 0.3
    z = torch.ones(b, 3)
    out = MoCoV3Loss(temperature=tau)(z, z, z, z)
    assert out["loss"].item() == pytest.approx(4 * tau * math.log(b), rel=1e-6)


def test_v3_defaults_and_accuracy():
    loss_fn = LOSSES.build({"name": "MoCoV3Loss"})
    assert loss_fn.temperature == 1.0
    z = torch.eye(3, 4)
    assert loss_fn(z, z, z.clone(), z.clone())["acc"].item() == pytest.approx(100.0)
    assert loss_fn(z, z, z.roll(1, 0), z.roll(1, 0))["acc"].item() == pytest.approx(0.0)


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"name": "MoCoV2Loss", "temperature": 0.0}, "temperature"),
        ({"name": "MoCoV2Loss", "queue_size": 0}, "queue_size"),
        ({"name": "MoCoV2Loss", "dim": -1}, "dim"),
        ({"name": "MoCoV3Loss", "temperature": -1.0}, "temperature"),
    ],
)
def test_bad_arguments_name_the_argument(cfg, match):
    with pytest.raises(ValueError, match=match):
        LOSSES.build(cfg)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="MoCoV3Loss"):
        MoCoV3Loss()(torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="MoCoV2Loss"):
        MoCoV2Loss(dim=3, queue_size=4)(torch.randn(2, 3), torch.randn(2, 4))
