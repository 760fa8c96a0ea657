"""Process-group set-up for scripts started by ``launch.py``, torchrun, submitit or plain ``python``.

The launcher sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; this module
turns them into a process group (``init_method="env://"``). Without those variables the script is
a single process and no process group is created, so ``python tools/train.py -c cfg.yaml`` works
unchanged. The collective helpers in ``hirl_like.distributed`` work in both cases.

Backend: NCCL when the device is CUDA, gloo otherwise (so 2-process tests run on a CPU machine).
"""

from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

_DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass
class DistInfo:
    """Where this process sits in the job; ``backend`` is None when no process group exists."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer") from None


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device not in _DEVICE_CHOICES:
        raise ValueError(f"device={device!r}: use one of {_DEVICE_CHOICES}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is visible: use device='auto' or 'cpu'")
    n_gpus = torch.cuda.device_count()
    if local_rank >= n_gpus:
        raise ValueError(
            f"LOCAL_RANK={local_rank} but only {n_gpus} GPU(s) are visible on this node: "
            f"start at most {n_gpus} processes per node (launch.py --np {n_gpus})"
        )
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto", timeout_s: float = 1800) -> DistInfo:
    """Read the launcher's env vars, pick the device and (if WORLD_SIZE > 1) join the process group.

    device: "auto" = ``cuda:LOCAL_RANK`` when CUDA is available else CPU; "cpu" forces CPU and gloo
    even on a GPU machine; "cuda" requires a GPU. Calling it again after the group exists returns
    the same information without re-initialising.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s} must be > 0 (seconds a collective may wait)")
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"RANK={rank}, WORLD_SIZE={world_size}: need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE "
            "(start the script through launch.py or set both variables consistently)"
        )
    if world_size > 1 and "RANK" not in os.environ:
        raise ValueError(f"WORLD_SIZE={world_size} is set but RANK is not: start the script via launch.py")

    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        # Before init_process_group so NCCL binds this process to its own GPU, not GPU 0.
        torch.cuda.set_device(dev)

    if world_size == 1:
        return DistInfo(rank=0, world_size=1, local_rank=local_rank, device=dev, backend=None)

    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    else:
        backend = str(dist.get_backend())
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=dev,
        backend=backend,
    )


def cleanup_distributed() -> None:
    """Destroy the default process group if one exists (safe to call in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int, rank: int) -> None:
    """Seed python ``random``, numpy and torch (all devices) with ``seed + rank``.

    Adding the rank gives each process different augmentations / data order while staying
    reproducible; models that must start identical are synchronised by DDP's initial broadcast.
    """
    if seed < 0 or rank < 0:
        raise ValueError(f"seed={seed}, rank={rank}: both must be >= 0")
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)  # numpy only accepts 32-bit seeds
    torch.manual_seed(s)  # also seeds every CUDA device
