"""hirl_like.engine.dist_setup: env-var driven process-group set-up, single- and two-process."""

from __future__ import annotations

import os
import random
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hirl_like.engine.dist_setup import DistInfo, cleanup_distributed, init_distributed, seed_everything

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_launch_env(monkeypatch):
    for k in LAUNCH_VARS:
        monkeypatch.delenv(k, raising=False)


def test_single_process_without_env(no_launch_env):
    info = init_distributed(device="cpu")
    assert info == DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    assert info.is_main and not info.is_distributed
    assert not dist.is_initialized()
    cleanup_distributed()  # no group: must be a harmless no-op
    assert not dist.is_initialized()


def test_auto_device(no_launch_env):
    info = init_distributed(device="auto")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert info.device == expected
    assert info.backend is None


def test_world_size_one_under_launcher_makes_no_group(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    info = init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.backend) == (0, 1, None)
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    "env, kwargs, match",
    [
        ({}, {"device": "gpu"}, "device='gpu'"),
        ({}, {"timeout_s": 0}, "timeout_s"),
        ({"WORLD_SIZE": "2"}, {}, "RANK is not"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, {}, "0 <= RANK < WORLD_SIZE"),
        ({"WORLD_SIZE": "two", "RANK": "0"}, {}, "must be an integer"),
    ],
)
def test_bad_settings_raise(no_launch_env, monkeypatch, env, kwargs, match):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        init_distributed(**{"device": "cpu", **kwargs})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_requested_without_gpu(no_launch_env):
    with pytest.raises(ValueError, match="no CUDA device"):
        init_distributed(device="cuda")


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seed_everything_reproducible_and_rank_dependent():
    seed_everything(7, 0)
    a = _draws()
    seed_everything(7, 0)
    assert _draws() == a
    seed_everything(7, 1)
    b = _draws()
    assert all(x != y for x, y in zip(a, b))
    seed_everything(6, 1)  # seed + rank is what counts
    assert _draws() == a
    with pytest.raises(ValueError, match=">= 0"):
        seed_everything(-1, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    info = init_distributed(device="cpu", timeout_s=60)
    again = init_distributed(device="cpu", timeout_s=60)  # second call reuses the group
    x = torch.tensor([float(rank + 1)])
    dist.all_reduce(x)
    queue.put((rank, info.rank, info.world_size, info.local_rank, info.backend, again.backend, float(x)))
    cleanup_distributed()
    queue.put((rank, "destroyed", dist.is_initialized()))


@pytest.mark.slow
def test_two_processes_gloo():
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(_free_port(), queue), nprocs=2, join=True)
    got = [queue.get() for _ in range(4)]
    infos = sorted(g for g in got if g[1] != "destroyed")
    assert infos == [(0, 0, 2, 0, "gloo", "gloo", 3.0), (1, 1, 2, 1, "gloo", "gloo", 3.0)]
    assert sorted(g for g in got if g[1] == "destroyed") == [(0, "destroyed", False), (1, "destroyed", False)]
