"""DataLoader builders: a resumable training loader per epoch, the run-long training loaders of the
trainer (:class:`TrainLoaders`) and an unpadded sharded eval loader.

Training: one loader per epoch. Its order comes from :class:`ResumableDistributedSampler`
(a function of (seed, epoch)), its views from the dataset (a function of (dataset seed, epoch,
index)), so a run resumed at ``start_iteration`` sees exactly the batches an uninterrupted run
would have seen, whatever ``num_workers`` is. Skipped batches are never loaded.

Bad samples: both loaders collate with :func:`~hirl_like.data.bad_samples.collate_skip_bad`, so a
dataset may return a :class:`~hirl_like.data.bad_samples.BadSample` in place of a sample: it is
dropped from its batch (which is smaller by one) and listed under ``batch["_bad"]`` for the
trainer to count, including when it was loaded in a worker process.

Streaming (``IterableDataset``, e.g. WebDataset shards): no sampler. The loader calls
``dataset.set_epoch(epoch)`` and ``dataset.set_stream_split(rank, world_size, num_workers,
batch_size, start_batch)``; the dataset splits its samples across ranks and workers itself and
yields exactly ``len(dataset) // (world_size * batch_size)`` batches per rank and epoch (counting
those before ``start_batch``). Exact mid-epoch resume holds for map-style data whatever
``num_workers`` is; a stream resumes exactly only with the same world size and ``num_workers``
(its split depends on them) and re-reads the bytes of the skipped batches.

One run, many epochs (:class:`TrainLoaders`, what the trainer uses): map-style data is read by one
DataLoader iterated once for the whole run, epoch after epoch, so its workers start once and
persist (``persistent_workers``) and the next epoch's first batches are prefetched while the
current epoch ends; the epoch travels with each index (the batch sampler yields ``(epoch, index)``
pairs and the workers' dataset copies switch to that epoch), so the batches are those of
:func:`build_train_loader`. Each worker keeps ``prefetch_factor`` (2) batches in flight: with the
recipes' 10 workers, 20 batches (~4 GB of 224/96-px multi-crop batches of 96 per process) are
ready, enough to ride out slow samples without holding much more memory. Streaming datasets get a
new :class:`StreamLoader` per epoch (their split is set in the main process before the workers
start, so it cannot reach persistent workers).

Evaluation: each rank loads a contiguous shard ``[begin, end)`` of the dataset, with no padding:
concatenating the ranks' outputs in rank order gives every sample exactly once, in dataset order.
Shards differ in length by at most one; gather with padding and trim (or use the ``index`` key).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

PREFETCH_FACTOR = 2  # batches in flight per worker (torch's default, made explicit)

from hirl_like.data.bad_samples import collate_skip_bad
from hirl_like.data.captions import mix_seed
from hirl_like.data.sampler import ResumableDistributedSampler

_SALT_LOADER = 0x10AD


def worker_init_fn(worker_id: int) -> None:
    """One intra-op thread per worker: N workers x M threads would oversubscribe small CPU boxes."""
    torch.set_num_threads(1)


def _check_common(batch_size: int, num_workers: int, rank: int, world_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size (per rank) must be a positive int, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")


class StreamLoader(DataLoader):
    """A DataLoader over a streaming dataset whose ``len`` is the number of batches it yields."""

    steps: int = 0

    def __len__(self) -> int:
        return self.steps


def _build_stream_loader(
    dataset: IterableDataset,
    batch_size: int,
    num_workers: int,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    start_iteration: int,
    pin_memory: bool,
    persistent_workers: bool,
    prefetch_factor: int = PREFETCH_FACTOR,
) -> StreamLoader:
    if not hasattr(dataset, "set_stream_split") or not hasattr(dataset, "set_epoch"):
        raise ValueError(
            f"{type(dataset).__name__} is an IterableDataset without set_epoch/set_stream_split; streaming "
            "datasets must split themselves across ranks and workers (see WebDatasetShards)"
        )
    steps_per_epoch = len(dataset) // (world_size * batch_size)  # type: ignore[arg-type]
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(dataset)} samples are fewer than one global batch ({batch_size} x {world_size} ranks); "  # type: ignore[arg-type]
            "lower the batch size"
        )
    if not 0 <= start_iteration <= steps_per_epoch:
        raise ValueError(f"start_iteration must be in [0, {steps_per_epoch}] (steps per epoch), got {start_iteration}")
    dataset.set_epoch(epoch)
    dataset.set_stream_split(
        rank=rank, world_size=world_size, num_workers=num_workers, batch_size=batch_size, start_batch=start_iteration
    )
    generator = torch.Generator()
    generator.manual_seed(mix_seed(seed, _SALT_LOADER, epoch, rank) >> 1)
    loader = StreamLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        drop_last=True,
        collate_fn=collate_skip_bad,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        worker_init_fn=worker_init_fn if num_workers > 0 else None,
        generator=generator,
    )
    loader.steps = steps_per_epoch - start_iteration
    return loader


def build_train_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    start_iteration: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int = PREFETCH_FACTOR,
) -> DataLoader:
    """Loader over this rank's shuffled share of ``epoch``, from batch ``start_iteration`` on.

    ``batch_size`` is per rank; incomplete last batches are dropped (``len(loader)`` = steps left in
    the epoch). Calls ``dataset.set_epoch(epoch)`` when the dataset has it. ``seed`` fixes the order;
    augmentations use the dataset's own ``seed``. Build a new loader each epoch: workers hold a
    copy of the dataset, so ``persistent_workers`` only helps if this loader is iterated again
    (:class:`TrainLoaders`, the trainer's, keeps one loader and its workers for the whole run).
    ``loader.sampler`` is the :class:`ResumableDistributedSampler` (its ``state_dict`` is
    checkpointable). A streaming dataset (``IterableDataset``) gets a :class:`StreamLoader` instead
    (see the module docstring).
    """
    _check_common(batch_size, num_workers, rank, world_size)
    if isinstance(dataset, IterableDataset):
        return _build_stream_loader(
            dataset, batch_size, num_workers, seed, epoch, rank, world_size, start_iteration, pin_memory, persistent_workers,
            prefetch_factor,
        )
    n = len(dataset)  # type: ignore[arg-type]
    sampler = ResumableDistributedSampler(
        n, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    steps_per_epoch = sampler.num_samples // batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{n} samples over {world_size} rank(s) give {sampler.num_samples} per rank, fewer than one batch of "
            f"{batch_size}; lower the batch size"
        )
    if not 0 <= start_iteration <= steps_per_epoch:
        raise ValueError(f"start_iteration must be in [0, {steps_per_epoch}] (steps per epoch), got {start_iteration}")
    sampler.set_epoch(epoch, start_index=start_iteration * batch_size)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    generator = torch.Generator()
    generator.manual_seed(mix_seed(seed, _SALT_LOADER, epoch, rank) >> 1)  # fixes workers' base seeds too
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        collate_fn=collate_skip_bad,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        worker_init_fn=worker_init_fn if num_workers > 0 else None,
        generator=generator,
    )


class _AtEpoch(Dataset):
    """A map-style dataset indexed by ``(epoch, index)``: switches (its worker's copy) to ``epoch`` first."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class _RunBatches(Sampler[list]):
    """Batches of ``(epoch, index)``, epoch after epoch without end, from ``start = (epoch, batch)``:
    each epoch's order is the :class:`ResumableDistributedSampler`'s, its incomplete tail dropped.
    Runs in the main process as the loader asks for indices, so the sampler's epoch runs ahead of
    the batches the trainer has taken by the prefetched ones."""

    def __init__(self, sampler: ResumableDistributedSampler, batch_size: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.start = (0, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start = self.start
        steps = self.sampler.num_samples // self.batch_size
        while True:
            self.sampler.set_epoch(epoch, start_index=start * self.batch_size)
            indices = list(self.sampler)
            for b in range(steps - start):
                yield [(epoch, i) for i in indices[b * self.batch_size:(b + 1) * self.batch_size]]
            epoch, start = epoch + 1, 0


class _EpochView:
    """One epoch's batches (``len`` = steps left) taken from a :class:`TrainLoaders`' run-long iterator."""

    def __init__(self, owner: "TrainLoaders", epoch: int, start: int) -> None:
        self.owner, self.epoch, self.start = owner, epoch, start

    def __len__(self) -> int:
        return self.owner.steps_per_epoch - self.start

    def __iter__(self) -> Iterator[Any]:
        owner, steps = self.owner, self.owner.steps_per_epoch
        if self.start >= steps:
            return
        if owner._position != (self.epoch, self.start):
            raise RuntimeError(f"epoch {self.epoch} from batch {self.start} was iterated already; call for_epoch again")
        for step in range(self.start, steps):
            batch = next(owner._iterator)
            owner._position = (self.epoch, step + 1) if step + 1 < steps else (self.epoch + 1, 0)
            yield batch


class TrainLoaders:
    """The training loader of every epoch of one run (see the module docstring).

    ``for_epoch(epoch, start_iteration)`` gives the batches :func:`build_train_loader` gives for the
    same arguments. Map-style data: one DataLoader iterated once for the run, epoch after epoch, so
    its workers persist (``persistent_workers``, the default, with ``num_workers > 0``) and
    prefetch the next epoch's first batches while the current epoch ends; a ``for_epoch`` that
    does not continue where the last one stopped (a resume, a skipped epoch) restarts that
    iteration. Streaming data: a new :class:`StreamLoader` per epoch. Workers stop when this object
    is garbage-collected or :meth:`close` is called.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        num_workers: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        prefetch_factor: int = PREFETCH_FACTOR,
    ) -> None:
        _check_common(batch_size, num_workers, rank, world_size)
        self.dataset, self.batch_size, self.num_workers, self.seed = dataset, batch_size, num_workers, seed
        self.rank, self.world_size, self.pin_memory = rank, world_size, pin_memory
        self.persistent_workers, self.prefetch_factor = persistent_workers, prefetch_factor
        self.streaming = isinstance(dataset, IterableDataset)
        self._loader: DataLoader | None = None
        self._iterator: Iterator[Any] | None = None
        self._position: tuple[int, int] | None = None  # (epoch, batch) the iterator yields next
        self.sampler: ResumableDistributedSampler | None = None
        if self.streaming:
            return
        n = len(dataset)  # type: ignore[arg-type]
        self.sampler = ResumableDistributedSampler(n, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.steps_per_epoch = self.sampler.num_samples // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{n} samples over {world_size} rank(s) give {self.sampler.num_samples} per rank, fewer than one batch of "
                f"{batch_size}; lower the batch size"
            )
        generator = torch.Generator()
        generator.manual_seed(mix_seed(seed, _SALT_LOADER, 0, rank) >> 1)  # workers' base seeds (unused by the data)
        self._batches = _RunBatches(self.sampler, batch_size)
        self._loader = DataLoader(
            _AtEpoch(dataset),
            batch_sampler=self._batches,
            num_workers=num_workers,
            collate_fn=collate_skip_bad,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers and num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            worker_init_fn=worker_init_fn if num_workers > 0 else None,
            generator=generator,
        )

    def for_epoch(self, epoch: int, start_iteration: int = 0) -> DataLoader | _EpochView:
        """This rank's batches of ``epoch`` from batch ``start_iteration`` on (``len`` = steps left)."""
        if self.streaming:
            return build_train_loader(
                self.dataset, self.batch_size, self.num_workers, self.seed, epoch, self.rank, self.world_size,
                start_iteration, self.pin_memory, persistent_workers=False, prefetch_factor=self.prefetch_factor,
            )
        assert self._loader is not None
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_iteration <= self.steps_per_epoch:
            raise ValueError(f"start_iteration must be in [0, {self.steps_per_epoch}] (steps per epoch), got {start_iteration}")
        if start_iteration == self.steps_per_epoch:  # nothing left of this epoch
            return _EpochView(self, epoch, start_iteration)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)  # the main process's copy (anything reading it there)
        if self._iterator is None or self._position != (epoch, start_iteration):
            self._batches.start = (epoch, start_iteration)
            self._iterator = iter(self._loader)  # persistent workers are reset, not restarted
            self._position = (epoch, start_iteration)
        return _EpochView(self, epoch, start_iteration)

    def close(self) -> None:
        """Stop the persistent workers (a later :meth:`for_epoch` starts new ones)."""
        self._iterator = self._position = None
        if self._loader is not None and getattr(self._loader, "_iterator", None) is not None:
            self._loader._iterator = None  # its finaliser shuts the workers down


def eval_shard_range(dataset_size: int, rank: int, world_size: int) -> range:
    """Contiguous shard of ``rank``: sizes differ by at most one, earlier ranks take the extra ones."""
    if dataset_size < 0:
        raise ValueError(f"dataset_size must be >= 0, got {dataset_size}")
    base, extra = divmod(dataset_size, world_size)
    begin = rank * base + min(rank, extra)
    return range(begin, begin + base + (1 if rank < extra else 0))


class ShardSampler(Sampler[int]):
    """Yields a fixed list of indices in order; ``indices`` tells which samples this rank evaluates."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = list(indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_eval_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Loader over this rank's contiguous shard (:func:`eval_shard_range`), in order, no padding.

    ``loader.sampler.indices`` lists the dataset indices this rank gets; the last batch may be smaller.
    Bad samples (:mod:`hirl_like.data.bad_samples`) are dropped and listed under ``batch["_bad"]``;
    rely on the ``index`` key, not on positions, to match outputs to samples.
    """
    _check_common(batch_size, num_workers, rank, world_size)
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            f"evaluation needs a map-style dataset with indices; {type(dataset).__name__} is streamed. "
            "Evaluate on ImageFolder / CsvCaptions / ImageCaptionFolder data instead."
        )
    sampler = ShardSampler(eval_shard_range(len(dataset), rank, world_size))  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        drop_last=False,
        collate_fn=collate_skip_bad,
        worker_init_fn=worker_init_fn if num_workers > 0 else None,
    )
