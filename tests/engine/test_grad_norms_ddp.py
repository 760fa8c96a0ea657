"""Per-objective gradient norms under DDP (2 processes, gloo): measuring on the wrapped model's graph
fires no DDP gradient hook (no parameter gets a .grad before the step's backward), does not hang
on the CLIP gather's backward all-reduce, and leaves the trained weights bit-identical to a run
that never measures, on every rank, with and without ``find_unused_parameters``."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(find_unused: bool, rank: int):
    """A tiny Harmony pipeline, its TrainStep, and the DDP wrapper the step calls."""
    from hirl_like.engine.optim import build_optimizer
    from hirl_like.engine.train_step import TrainStep
    from hirl_like.pipelines.composed import ComposedPipeline
    from tests.pipelines.conftest import TINY_OBJECTIVE_ARGS, TINY_TEXT, TINY_VISION

    torch.manual_seed(0)
    pipeline = ComposedPipeline(
        objectives=["clip", "ibot", "mae", "mlm", "text_distill"], vision=TINY_VISION, text=TINY_TEXT, embed_dim=32,
        **TINY_OBJECTIVE_ARGS,
    ).train()
    optimizer, schedule = build_optimizer({"name": "adamw", "lr": 1e-3}, pipeline, 8, 10, 100, torch.device("cpu"))
    step = TrainStep(pipeline, optimizer, schedule, device=torch.device("cpu"), grad_clip=3.0, grad_clip_mode="per_tensor", rank=rank)
    step.model = torch.nn.parallel.DistributedDataParallel(pipeline, find_unused_parameters=find_unused)
    return pipeline, step


def _batch_and_progress(i: int, rank: int):
    from hirl_like.schedules import Progress
    from tests.pipelines.conftest import tiny_batch

    # different data on each rank; iteration 20 of 10 per epoch is past the frozen first epoch
    return tiny_batch(batch_size=4, seed=10 * i + rank), Progress(20 + i, 10, 100, seed=0)


def _measuring_leaves_grads_untouched(find_unused: bool, rank: int) -> bool:
    from hirl_like.engine.grad_norms import objective_grad_norms

    pipeline, step = _build(find_unused, rank)
    batch, progress = _batch_and_progress(0, rank)
    pipeline.update_schedules(progress)
    out = step.model(batch)
    norms = objective_grad_norms(pipeline.take_weighted_terms(), pipeline.grad_norm_parameters())
    untouched = bool(norms) and all(p.grad is None for p in pipeline.parameters())
    out["loss"].backward()  # DDP expects the backward of the forward it prepared
    return untouched


def _train(find_unused: bool, measure: bool, rank: int) -> tuple[float, list[dict[str, float]]]:
    pipeline, step = _build(find_unused, rank)
    norms = []
    for i in range(STEPS):
        values = step(*_batch_and_progress(i, rank), measure_grad_norms=measure).values
        norms.append({k: v for k, v in values.items() if k.startswith("grad_norm/")})
    return float(sum(p.detach().double().sum() for p in pipeline.parameters())), norms


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    record = {}
    for find_unused in (False, True):
        measured, norms = _train(find_unused, True, rank)
        plain, no_norms = _train(find_unused, False, rank)
        record[str(find_unused)] = {
            "untouched": _measuring_leaves_grads_untouched(find_unused, rank),
            "measured": measured, "plain": plain, "norms": norms, "no_norms": no_norms,
        }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


@pytest.mark.slow
def test_grad_norms_under_ddp_change_nothing(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for mode in ("False", "True"):
        for r in ranks:
            assert r[mode]["untouched"], "autograd.grad under DDP wrote a .grad (a DDP hook fired)"
            assert r[mode]["measured"] == r[mode]["plain"], "measuring changed the trained weights"
            assert all(set(n) == {"grad_norm/clip", "grad_norm/ibot", "grad_norm/mae"} for n in r[mode]["norms"])
            assert r[mode]["no_norms"] == [{}] * STEPS
        assert ranks[0][mode]["measured"] == ranks[1][mode]["measured"], "ranks out of sync"
