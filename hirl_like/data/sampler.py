"""A distributed sampler whose order is a pure function of (seed, epoch) and that resumes mid-epoch.

Epoch order: ``perm = randperm(N, generator seeded with mix_seed(seed, epoch))`` (or ``arange(N)``
without shuffling). Then, like ``torch.utils.data.DistributedSampler``:

- ``drop_last=True``: keep the first ``R * floor(N / R)`` entries (the dropped tail changes each epoch);
- ``drop_last=False``: pad to ``R * ceil(N / R)`` by wrapping around to the start of ``perm``;

and rank r takes the strided slice ``perm[r::R]``: disjoint across ranks (up to the padding) and
of equal length, so every rank runs the same number of steps.

Resume: ``set_epoch(epoch, start_index=k)`` skips the first k indices of this rank's slice (the
samples it already consumed), without drawing them, so the rest is exactly what an uninterrupted
run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from hirl_like.data.captions import mix_seed

_SALT_ORDER = 0x5A3


class ResumableDistributedSampler(torch.utils.data.Sampler[int]):
    """Indices of this rank for the current epoch, from ``start_index`` on; ``len`` = remaining count."""

    def __init__(
        self,
        dataset_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        if not isinstance(dataset_size, int) or dataset_size < 1:
            raise ValueError(f"dataset_size must be a positive int, got {dataset_size!r}")
        if not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"num_replicas (world size) must be a positive int, got {num_replicas!r}")
        if not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank!r}")
        if drop_last and dataset_size < num_replicas:
            raise ValueError(
                f"drop_last with {dataset_size} samples and {num_replicas} ranks leaves every rank empty; "
                "use a larger dataset or drop_last=False"
            )
        self.dataset_size = dataset_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        if self.drop_last:
            self.num_samples = dataset_size // num_replicas
        else:
            self.num_samples = math.ceil(dataset_size / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.epoch = 0
        self.start_index = 0

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Select ``epoch``'s order and skip the ``start_index`` samples this rank already consumed."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= int(start_index) <= self.num_samples:
            raise ValueError(
                f"start_index must be in [0, {self.num_samples}] (samples per rank per epoch), got {start_index}"
            )
        self.epoch = int(epoch)
        self.start_index = int(start_index)

    def epoch_indices(self) -> list[int]:
        """This rank's full slice for the current epoch (ignores ``start_index``)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(mix_seed(self.seed, _SALT_ORDER, self.epoch) >> 1)  # 63 bits: a valid seed
            order = torch.randperm(self.dataset_size, generator=g).tolist()
        else:
            order = list(range(self.dataset_size))
        if self.total_size <= len(order):
            order = order[: self.total_size]
        else:  # pad by wrapping around (possibly more than once when N < R)
            reps = math.ceil(self.total_size / len(order))
            order = (order * reps)[: self.total_size]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "start_index": self.start_index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(
                f"sampler seed in the checkpoint ({state['seed']}) differs from this run's ({self.seed}); "
                "resuming would change the data order"
            )
        self.set_epoch(state["epoch"], state.get("start_index", 0))

    def __repr__(self) -> str:
        return (
            f"ResumableDistributedSampler(N={self.dataset_size}, rank={self.rank}/{self.num_replicas}, "
            f"epoch={self.epoch}, start_index={self.start_index}, shuffle={self.shuffle}, drop_last={self.drop_last})"
        )
