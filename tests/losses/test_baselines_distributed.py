"""MoCoV2Loss (queue), MoCoV3Loss and SwAVLoss (Sinkhorn, queue) on a 2-process gloo group with B
rows each, against one process on the concatenated 2B batch (same conventions as test_distributed):
the mean over ranks of the losses equals the single-process loss, each rank's input gradient is
W times the single process's gradient of its rows, and the queues are identical on every rank and
equal to the single process's queue (so DDP's buffer broadcast and rank-0 checkpoints lose nothing).
For SwAV the queue check covers the per-rank shares: Sinkhorn over (own share + own batch) on every
rank equals Sinkhorn over (whole queue + whole batch) in one process."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hirl_like.losses.moco import MoCoV2Loss, MoCoV3Loss
from hirl_like.losses.swav import SwAVLoss, sinkhorn_knopp
from tests.losses._two_ranks import ranks_and_single

WORLD, B, D, K, QUEUE, CROPS, STEPS = 2, 2, 4, 5, 8, 3, 3


def _inputs() -> dict[str, torch.Tensor]:
    """STEPS batches of WORLD*B rows; rank r owns rows [r*B, (r+1)*B) of each (crop-major for SwAV)."""
    g = torch.Generator().manual_seed(0)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    return {
        "q": torch.randn(STEPS, WORLD * B, D, generator=g), "k": torch.randn(STEPS, WORLD * B, D, generator=g),
        "q1": torch.randn(WORLD * B, D, generator=g), "q2": torch.randn(WORLD * B, D, generator=g),
        "k1": torch.randn(WORLD * B, D, generator=g), "k2": torch.randn(WORLD * B, D, generator=g),
        "emb": unit(STEPS, CROPS, WORLD * B, D), "protos": unit(K, D),
    }


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def _compute(x: dict[str, torch.Tensor], lo: int, hi: int) -> dict[str, torch.Tensor]:
    res: dict[str, torch.Tensor] = {}
    with torch.random.fork_rng():
        torch.manual_seed(1)  # the same random initial MoCo queue everywhere
        moco2 = MoCoV2Loss(dim=D, queue_size=6)
    for step in range(STEPS):
        q = _leaf(x["q"][step, lo:hi])
        out = moco2(q, x["k"][step, lo:hi])
        out["loss"].backward()
        res[f"m2_loss{step}"], res[f"m2_gq{step}"] = out["loss"].detach(), q.grad
    res["m2_queue"], res["m2_ptr"] = moco2.queue.queue.clone(), moco2.queue.ptr.clone()

    q1, q2 = _leaf(x["q1"][lo:hi]), _leaf(x["q2"][lo:hi])
    out = MoCoV3Loss(temperature=0.2)(q1, q2, x["k1"][lo:hi], x["k2"][lo:hi])
    out["loss"].backward()
    res.update(m3_loss=out["loss"].detach(), m3_g1=q1.grad, m3_g2=q2.grad)

    scores = x["emb"][0, 0, lo:hi] @ x["protos"].T
    res["sk_codes"] = sinkhorn_knopp(scores)

    swav = SwAVLoss(num_crops=CROPS, queue_length=QUEUE, feat_dim=D)
    for step in range(STEPS):  # the queue (2 batches of 2B) is full from the third step on
        emb = x["emb"][step, :, lo:hi].reshape(-1, D)
        s = _leaf(emb @ x["protos"].T)
        out = swav(s, emb, x["protos"])
        out["loss"].backward()
        res[f"sw_loss{step}"], res[f"sw_g{step}"] = out["loss"].detach(), s.grad.view(CROPS, hi - lo, K)
    res["sw_queue"] = swav.queue.clone()
    return {k: v.detach().clone() for k, v in res.items()}


def test_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path):
    ranks, single = ranks_and_single(_compute, _inputs, B, WORLD, tmp_path)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731

    losses = [f"m2_loss{s}" for s in range(STEPS)] + ["m3_loss"] + [f"sw_loss{s}" for s in range(STEPS)]
    for key in losses:
        close(torch.stack([r[key] for r in ranks]).mean(), single[key])
    for key in [f"m2_gq{s}" for s in range(STEPS)] + ["m3_g1", "m3_g2"]:
        close(torch.cat([r[key] for r in ranks]), WORLD * single[key])
        assert single[key].abs().sum() > 0
    for s in range(STEPS):  # SwAV gradients are (crop, row, K): ranks split the rows
        close(torch.cat([r[f"sw_g{s}"] for r in ranks], dim=1), WORLD * single[f"sw_g{s}"])
    close(torch.cat([r["sk_codes"] for r in ranks]), single["sk_codes"])
    for key in ("m2_queue", "m2_ptr", "sw_queue"):
        for r in ranks:
            close(r[key], single[key])
    assert single["sw_queue"].abs().sum() > 0
