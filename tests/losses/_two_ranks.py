"""Run a loss computation on a 2-process gloo group and in one process, for the distributed tests.

``compute(inputs, lo, hi)`` evaluates the losses on rows ``lo:hi`` of ``inputs`` (every rank
builds the same inputs from a fixed seed) and returns a dict of tensors; each rank saves its
dict, and the single process runs rows ``0:world * rows`` of the same inputs.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

Compute = Callable[[dict, int, int], dict]


def _worker(rank: int, port: int, out_dir: str, compute: Compute, inputs: Callable[[], dict], rows: int, world: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(compute(inputs(), rank * rows, (rank + 1) * rows), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ranks_and_single(
    compute: Compute, inputs: Callable[[], dict], rows: int, world: int, folder: Path
) -> tuple[list[dict], dict]:
    """(each rank's results, the single process's results on all world x rows rows)."""
    mp.spawn(_worker, args=(_free_port(), str(folder), compute, inputs, rows, world), nprocs=world, join=True)
    ranks = [torch.load(folder / f"rank{r}.pt") for r in range(world)]
    torch.set_num_threads(1)
    return ranks, compute(inputs(), 0, world * rows)
