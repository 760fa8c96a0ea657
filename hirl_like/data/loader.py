"""DataLoader builders: a resumable training loader per epoch and an unpadded sharded eval loader.

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

Evaluation: each rank loads a contiguous shard ``[begin, end)`` of the dataset, with no padding:
concatenating the ranks' outputs in rank order gives every sample exactly once, in dataset order.
Shards differ in length by at most one; gather with padding and trim (or use the ``index`` key).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

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
) -> DataLoader:
    """Loader over this rank's shuffled share of ``epoch``, from batch ``start_iteration`` on.

    ``batch_size`` is per rank; incomplete last batches are dropped (``len(loader)`` = steps left in
    the epoch). Calls ``dataset.set_epoch(epoch)`` when the dataset has it. ``seed`` fixes the order;
    augmentations use the dataset's own ``seed``. Build a new loader each epoch: workers hold a
    copy of the dataset, so ``persistent_workers`` only helps if this loader is iterated again.
    ``loader.sampler`` is the :class:`ResumableDistributedSampler` (its ``state_dict`` is
    checkpointable). A streaming dataset (``IterableDataset``) gets a :class:`StreamLoader` instead
    (see the module docstring).
    """
    _check_common(batch_size, num_workers, rank, world_size)
    if isinstance(dataset, IterableDataset):
        return _build_stream_loader(
            dataset, batch_size, num_workers, seed, epoch, rank, world_size, start_iteration, pin_memory, persistent_workers
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
        worker_init_fn=worker_init_fn if num_workers > 0 else None,
        generator=generator,
    )


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
