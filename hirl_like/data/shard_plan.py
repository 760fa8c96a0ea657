"""The epoch plan of a sharded stream: which samples of which shards each rank's worker reads.

Pure functions of the shard sizes, the shard order, the rank, the worker role, the steps per
epoch and the batch size (see :mod:`hirl_like.data.webdataset_shards` for the plan in words),
plus the seeded streaming shuffle buffer each worker mixes its samples through.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, end)`` (positions inside the tar) of shard number ``shard``."""

    shard: int
    start: int
    end: int


def role_batches(role: int, steps: int, num_roles: int) -> int:
    """Batches of worker role ``role``: the rank's batch j comes from role ``j % num_roles``."""
    return len(range(role, steps, num_roles))


def plan_segments(
    counts: Sequence[int], order: Sequence[int], rank: int, role: int, steps: int, num_roles: int, batch_size: int
) -> list[Segment]:
    """The segments (in reading order) that worker role ``role`` of ``rank`` reads this epoch."""
    per_rank = steps * batch_size
    begin = rank * per_rank + sum(role_batches(q, steps, num_roles) for q in range(role)) * batch_size
    end = begin + role_batches(role, steps, num_roles) * batch_size
    ordered = [counts[i] for i in order]
    starts = [0]
    for c in ordered:
        starts.append(starts[-1] + c)
    segments = []
    k = bisect.bisect_right(starts, begin) - 1
    while begin < end and k < len(ordered):
        a = begin - starts[k]
        b = min(ordered[k], end - starts[k])
        if b > a:
            segments.append(Segment(order[k], a, b))
        begin = starts[k] + b
        k += 1
    return segments


def shuffle_buffer(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Streaming shuffle: keep ``size`` items, emit a random one as each new item arrives."""
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = rng.randrange(size)
        buffer[k], item = item, buffer[k]
        yield item
    rng.shuffle(buffer)
    yield from buffer
