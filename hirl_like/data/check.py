"""Scan a whole data set once and count its bad samples by reason, before any training.

Training only meets a bad sample when an epoch reads it, and an epoch drops its last partial batch,
so an epoch's counts are a lower bound that arrives late. :func:`check_dataset` reads every sample
exactly once, through the dataset's own ``__getitem__`` / ``__iter__`` (so the same decoder,
caption rules and :class:`~hirl_like.data.bad_samples.BadSample` reasons as training), and for
WebDataset shards also inspects every local tar (:func:`hirl_like.data.tar_shards.inspect_tar`):
a shard cut short, even between two samples, or holding another number of samples than its
sizes file lists, is a *shard problem*, counted and named.

By default the views are not built (the image is decoded, converted and, for ImageFolder,
resized, then dropped): a bad sample is one that cannot be read, and building multi-crop views
would only slow the scan. ``with_transform=True`` runs the training transform too.

The command is ``tools/check_data.py -c CONFIG [key=value ...]`` (:mod:`hirl_like.cli.check_data`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import DataLoader, Dataset, IterableDataset

from hirl_like.data.bad_samples import REASONS, BadSample, BadSampleTracker
from hirl_like.data.loader import worker_init_fn
from hirl_like.data.shard_urls import is_local, local_path
from hirl_like.data.tar_shards import inspect_tar

CHUNK = 64  # verdicts per message from a loader worker


@dataclass
class DataCheck:
    """What a scan found: ``samples`` read, bad ones per reason (first few kept per reason), and
    shard-level problems (one line each)."""

    name: str
    samples: int = 0
    bad_by_reason: Counter = field(default_factory=Counter)
    examples: dict[str, list[BadSample]] = field(default_factory=dict)
    shard_problems: list[str] = field(default_factory=list)
    shards: int = 0
    allowed: int | None = None  # bad samples an epoch may hold before training stops
    limit_note: str = ""
    seconds: float = 0.0

    @property
    def bad(self) -> int:
        return sum(self.bad_by_reason.values())

    @property
    def ok(self) -> bool:
        return self.bad == 0 and not self.shard_problems

    def add(self, verdict: BadSample | None, keep: int) -> None:
        self.samples += 1
        if verdict is None:
            return
        reason = verdict.reason if verdict.reason in REASONS else "other"
        self.bad_by_reason[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < keep:
            kept.append(verdict)

    def lines(self) -> list[str]:
        """The report, one finding per line."""
        share = f" ({100.0 * self.bad / self.samples:.2f}%)" if self.samples else ""
        out = [f"{self.name}: read {self.samples} samples in {self.seconds:.1f} s: {self.samples - self.bad} good, {self.bad} bad{share}"]
        for reason in REASONS:
            n = self.bad_by_reason.get(reason, 0)
            if n:
                first = "; ".join(b.describe() for b in self.examples.get(reason, []))
                out.append(f"  {reason}: {n}" + (f" (first: {first})" if first else ""))
        if self.shards:
            out.append(f"shards: {len(self.shard_problems)} of {self.shards} with problems")
            out.extend(f"  {p}" for p in self.shard_problems)
        if self.allowed is not None:
            verdict = "over the limit: training would stop" if self.bad > self.allowed else "within the limit"
            out.append(f"limit: {self.bad} bad samples, {self.allowed} allowed per epoch ({self.limit_note}): {verdict}")
        return out


def _no_views(img: Any) -> dict:
    """A transform that builds nothing: the image was already decoded and converted."""
    return {}


class _MapVerdicts(Dataset):
    """Chunk ``c`` -> the verdicts (None = good, else the BadSample) of samples [c*CHUNK, (c+1)*CHUNK)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.n = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return (self.n + CHUNK - 1) // CHUNK

    def __getitem__(self, chunk: int) -> list[BadSample | None]:
        items = (self.dataset[i] for i in range(chunk * CHUNK, min(self.n, (chunk + 1) * CHUNK)))
        return [x if isinstance(x, BadSample) else None for x in items]


class _StreamVerdicts(IterableDataset):
    """The stream's verdicts in chunks; each loader worker reads its own part (set_stream_split)."""

    def __init__(self, dataset: IterableDataset) -> None:
        self.dataset = dataset

    def __iter__(self) -> Iterator[list[BadSample | None]]:
        chunk: list[BadSample | None] = []
        for x in self.dataset:
            chunk.append(x if isinstance(x, BadSample) else None)
            if len(chunk) == CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def shard_problems(dataset: Any) -> tuple[int, list[str]]:
    """(number of shards, one line per local shard that is cut short or not the size planned)."""
    urls, counts = list(getattr(dataset, "urls", [])), list(getattr(dataset, "counts", []))
    problems = []
    for url, planned in zip(urls, counts):
        if not is_local(url):
            continue  # a remote shard is only read, not inspected
        report = inspect_tar(local_path(url))
        if not report.complete:
            problems.append(f"{url}: {report.problem}")
        elif report.samples != planned:
            source = "listed in the sizes file" if getattr(dataset, "exact_counts", True) else "assumed from data.num_samples"
            fix = "delete the sizes file to recount" if getattr(dataset, "exact_counts", True) else "set data.num_samples: null"
            problems.append(f"{url}: holds {report.samples} samples, {planned} {source} ({fix})")
    return len(urls), problems


def _loader(dataset: Dataset | IterableDataset, num_workers: int) -> DataLoader:
    if isinstance(dataset, IterableDataset):
        shards = len(getattr(dataset, "urls", [None]))
        num_workers = min(num_workers, shards)  # more workers than shards would only split shards
        dataset.set_epoch(0)  # type: ignore[attr-defined]
        dataset.set_stream_split(rank=0, world_size=1, num_workers=num_workers, batch_size=1)  # type: ignore[attr-defined]
        source: Dataset | IterableDataset = _StreamVerdicts(dataset)
    else:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(0)
        source = _MapVerdicts(dataset)
    return DataLoader(
        source,
        batch_size=None,  # each item is already a chunk
        num_workers=num_workers,
        worker_init_fn=worker_init_fn if num_workers > 0 else None,
    )


def check_dataset(
    dataset: Dataset | IterableDataset,
    num_workers: int = 0,
    with_transform: bool = False,
    keep: int = 3,
    on_progress: Callable[[int], None] | None = None,
) -> DataCheck:
    """Read every sample of ``dataset`` once and count the bad ones (module docstring).

    Without ``with_transform`` the dataset's ``transform`` is replaced (build a fresh dataset to
    train on). ``on_progress(n)`` is called with the number of samples read after each chunk.
    """
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if not with_transform and hasattr(dataset, "transform"):
        dataset.transform = _no_views  # type: ignore[attr-defined]
    report = DataCheck(name=type(dataset).__name__)
    start = time.time()
    if isinstance(dataset, IterableDataset):
        report.shards, report.shard_problems = shard_problems(dataset)
    for chunk in _loader(dataset, num_workers):
        for verdict in chunk:
            report.add(verdict, keep)
        if on_progress is not None:
            on_progress(report.samples)
    report.seconds = time.time() - start
    if len(dataset) > 0:  # type: ignore[arg-type]
        tracker = BadSampleTracker.for_dataset(dataset)
        cap = "null" if tracker.max_bad_samples is None else str(tracker.max_bad_samples)
        report.allowed = tracker.allowed
        report.limit_note = (
            f"data.max_bad_fraction={tracker.max_bad_fraction:g} of {tracker.samples_per_epoch} samples, "
            f"data.max_bad_samples={cap}"
        )
    return report
