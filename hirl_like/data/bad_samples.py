"""Robust loading of web data: bad samples are skipped, counted per reason, reported, and limited.

Web-scraped image-caption data always holds some broken files. The policy here:

1. A dataset decodes images with :func:`hirl_like.data.decode.decode_image` (a full decode, so a
   truncated JPEG fails there instead of being padded with grey, then
   :func:`hirl_like.data.rgb.to_rgb`) and reads captions with :func:`read_caption_file` /
   :func:`clean_caption`. They raise :class:`BadSampleError` carrying a reason from :data:`REASONS`.
2. The dataset catches it and returns a :class:`BadSample` sentinel in place of the sample dict.
3. :func:`collate_skip_bad` (the loaders' ``collate_fn``) drops sentinels, so that batch is smaller by
   one per bad sample, and puts the sentinels under ``batch["_bad"]`` (only when there are any).
   This is how counts made inside DataLoader worker processes reach the main process.
   Nothing is replaced by another sample: a replacement would hide the problem and change which
   samples an epoch sees; the data never shrinks silently because every skip is counted.
4. The trainer pops ``"_bad"`` and feeds it to :class:`BadSampleTracker`, which counts per reason,
   keeps the first few paths, logs a per-epoch summary and stops the run with
   :class:`TooManyBadSamplesError` once an epoch holds more bad samples than allowed:

       allowed = floor(max_bad_fraction * samples_per_epoch), capped by max_bad_samples when set.

   The check runs on every batch against this process's count (a lower bound of the global
   count, so it never stops a run wrongly) and at each epoch end against the count summed over
   ranks (all ranks decide together there).
5. A checkpoint written mid-epoch stores the epoch's counts so far, summed over ranks
   (:meth:`BadSampleTracker.state_dict`); a run resumed in that epoch loads them on rank 0
   (:meth:`BadSampleTracker.load_state_dict`), so the epoch's summary and limit cover the samples
   read before and after the restart. A run stopped mid-epoch (``max_iterations``) logs its
   partial record and keeps the counts (``end_epoch(..., reset=False)``) for that checkpoint.

A batch whose every sample is bad cannot be collated (and data-parallel ranks must all step),
so :func:`collate_skip_bad` raises :class:`TooManyBadSamplesError` for it; that takes a run of
``batch_size`` consecutive bad samples, far beyond any sensible limit.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import default_collate

from hirl_like.data.tokenizer import trim_caption_batch

# Fixed order: the per-reason counts are summed across ranks as one tensor in this order.
REASONS: tuple[str, ...] = (
    "missing_file",     # the image file named by the index or the CSV row does not exist
    "empty_file",       # a zero-byte image
    "corrupt",          # not decodable as an image (random bytes, wrong format, broken stream)
    "truncated",        # decoding ran out of data (an interrupted download)
    "too_large",        # more pixels than PIL's decompression-bomb guard allows
    "missing_caption",  # no caption file / column / tar member
    "empty_caption",    # a caption that is empty after stripping whitespace
    "missing_image",    # a WebDataset sample without an image member
    "shard_error",      # a tar shard unreadable from this sample on, or shorter than its declared count
    "other",            # any other reason a dataset reports
)
BAD_KEY = "_bad"  # batch key holding the list of BadSample records of that batch


class BadSampleError(Exception):
    """Raised by the loading helpers; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason if reason in REASONS else "other"
        self.detail = detail


class TooManyBadSamplesError(ValueError):
    """More bad samples than the configured limit. A ValueError: it is an input-data problem,
    and the tools print ValueErrors as one clear line."""


@dataclass(frozen=True)
class BadSample:
    """The sentinel a dataset returns instead of a sample dict. Picklable (crosses worker processes)."""

    index: int
    path: str
    reason: str
    detail: str = ""

    def describe(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.path} ({self.reason}{detail})"


def bad_sample(index: int, path: str, err: BadSampleError) -> BadSample:
    return BadSample(index=int(index), path=str(path), reason=err.reason, detail=err.detail[:200])


# --------------------------------------------------------------------------------------------
# captions (images: hirl_like.data.decode.decode_image)
# --------------------------------------------------------------------------------------------
def clean_caption(text: str | bytes | None) -> str:
    """Caption text with surrounding whitespace removed; raises BadSampleError when missing or empty."""
    if text is None:
        raise BadSampleError("missing_caption")
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise BadSampleError("missing_caption", f"caption is a {type(text).__name__}, not text")
    text = text.strip()
    if not text:
        raise BadSampleError("empty_caption")
    return text


def read_caption_file(path: str | None) -> str:
    """The stripped UTF-8 text of a caption file; raises BadSampleError when absent or empty."""
    if path is None:
        raise BadSampleError("missing_caption", "no caption file")
    try:
        with open(path, "rb") as f:
            return clean_caption(f.read())
    except FileNotFoundError:
        raise BadSampleError("missing_caption", f"{path} not found") from None
    except OSError as err:
        raise BadSampleError("missing_caption", str(err)) from None


# --------------------------------------------------------------------------------------------
# collation
# --------------------------------------------------------------------------------------------
def collate_skip_bad(samples: Sequence[Any]) -> Any:
    """``default_collate`` of the good samples; the bad ones go, as a list, under ``batch["_bad"]``.

    Without bad samples the result is ``default_collate(samples)`` (no ``"_bad"`` key). Either way
    the captions ``batch["text"]`` (B, C) are cut to the batch's length, its longest caption
    rounded up to a multiple of 8 (:func:`~hirl_like.data.tokenizer.trim_caption_batch`): the
    text towers then compute ~B x 16 tokens instead of B x 77, with the same results.
    """
    bad = [s for s in samples if isinstance(s, BadSample)]
    if not bad:
        return trim_caption_batch(default_collate(samples))
    good = [s for s in samples if not isinstance(s, BadSample)]
    if not good:
        raise TooManyBadSamplesError(
            f"all {len(samples)} samples of a batch were bad ({format_counts(Counter(b.reason for b in bad))}); "
            f"first: {'; '.join(b.describe() for b in bad[:3])}. Check the data (a broken shard or folder?)."
        )
    if not all(isinstance(s, dict) for s in good):
        raise ValueError(
            "bad samples can only be skipped in datasets whose samples are dicts (the count travels "
            f"under batch['{BAD_KEY}']); got {type(good[0]).__name__}"
        )
    batch = trim_caption_batch(default_collate(good))
    batch[BAD_KEY] = bad
    return batch


def format_counts(counts: dict[str, int] | Counter) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if v)


# --------------------------------------------------------------------------------------------
# counting and the limit
# --------------------------------------------------------------------------------------------
def check_limit_args(max_bad_fraction: float, max_bad_samples: int | None) -> None:
    """Shared constructor validation for datasets that take the two limit arguments."""
    if not isinstance(max_bad_fraction, (int, float)) or not 0.0 <= float(max_bad_fraction) <= 1.0:
        raise ValueError(f"max_bad_fraction must be a fraction in [0, 1], got {max_bad_fraction!r}")
    if max_bad_samples is not None and (not isinstance(max_bad_samples, int) or max_bad_samples < 0):
        raise ValueError(f"max_bad_samples must be an int >= 0 or null (no cap), got {max_bad_samples!r}")


class BadSampleTracker:
    """Counts bad samples per reason in the current epoch and over the run; enforces the limit.

    Args:
        samples_per_epoch: the dataset size (the limit's denominator).
        max_bad_fraction: allowed fraction of an epoch's samples (default 0.01).
        max_bad_samples: absolute cap per epoch (None: only the fraction applies).
        keep_paths: how many bad paths to remember for reports.
    """

    def __init__(
        self,
        samples_per_epoch: int,
        max_bad_fraction: float = 0.01,
        max_bad_samples: int | None = None,
        keep_paths: int = 5,
    ) -> None:
        check_limit_args(max_bad_fraction, max_bad_samples)
        if not isinstance(samples_per_epoch, int) or samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be a positive int, got {samples_per_epoch!r}")
        self.samples_per_epoch = samples_per_epoch
        self.max_bad_fraction = float(max_bad_fraction)
        self.max_bad_samples = max_bad_samples
        self.keep_paths = int(keep_paths)
        allowed = math.floor(self.max_bad_fraction * samples_per_epoch + 1e-9)
        self.allowed = allowed if max_bad_samples is None else min(allowed, int(max_bad_samples))
        self.epoch_counts: Counter = Counter()
        self.epoch = 0  # the epoch epoch_counts belong to (advanced by end_epoch, set by load_state_dict)
        self.total = 0
        self.first_bad: list[BadSample] = []

    @classmethod
    def for_dataset(cls, dataset: Any) -> "BadSampleTracker":
        """A tracker with the dataset's own ``max_bad_fraction`` / ``max_bad_samples`` (defaults otherwise)."""
        return cls(
            samples_per_epoch=max(1, len(dataset)),
            max_bad_fraction=float(getattr(dataset, "max_bad_fraction", 0.01)),
            max_bad_samples=getattr(dataset, "max_bad_samples", None),
        )

    @property
    def epoch_count(self) -> int:
        return sum(self.epoch_counts.values())

    def update(self, bad: Iterable[BadSample] | None) -> None:
        """Count one batch's bad samples (``batch.pop("_bad", None)``); raise past the limit."""
        if not bad:
            return
        for record in bad:
            self.epoch_counts[record.reason if record.reason in REASONS else "other"] += 1
            self.total += 1
            if len(self.first_bad) < self.keep_paths:
                self.first_bad.append(record)
        if self.epoch_count > self.allowed:
            raise TooManyBadSamplesError(self._message(self.epoch_count, self.epoch_counts, "read so far on this process"))

    def _summed_counts(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None) -> dict[str, int]:
        """This epoch's per-reason counts, summed over ranks with ``reduce`` (a collective), non-zero only."""
        local = torch.tensor([float(self.epoch_counts.get(r, 0)) for r in REASONS], dtype=torch.float64)
        summed = reduce(local) if reduce is not None else local
        return {r: int(round(float(v))) for r, v in zip(REASONS, summed.cpu().tolist()) if v}

    def end_epoch(
        self, epoch: int, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, reset: bool = True
    ) -> dict[str, Any]:
        """The epoch's summary record, counts summed over ranks with ``reduce`` (e.g.
        ``hirl_like.distributed.all_reduce_sum``; every rank must call it).

        ``reset`` (an epoch that ended) clears the counts and moves on to epoch ``epoch + 1``;
        ``reset=False`` (a run stopped mid-epoch) keeps them for :meth:`state_dict`, so a run
        resumed in this epoch goes on counting from them.

        Returns ``{"type": "data_epoch", "epoch", "bad_samples", "bad_by_reason", "allowed_bad_samples"}``.
        Pass it to :meth:`check_epoch` (after logging it) to enforce the limit on every rank alike.
        """
        by_reason = self._summed_counts(reduce)
        count = sum(by_reason.values())
        if reset:
            self.epoch_counts = Counter()
            self.epoch = int(epoch) + 1
        record = {
            "type": "data_epoch",
            "epoch": int(epoch),
            "bad_samples": count,
            "bad_by_reason": by_reason,
            "allowed_bad_samples": self.allowed,
        }
        return record

    def state_dict(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
        """For a checkpoint: the current epoch's counts so far summed over ranks with ``reduce``
        (a collective: every rank must call it) and this process's first bad samples, as plain
        containers (loadable with ``torch.load(weights_only=True)``).

        Returns ``{"epoch": int, "bad_by_reason": {reason: count}, "first_bad": [[index, path, reason, detail], ...]}``.
        """
        return {
            "epoch": int(self.epoch),
            "bad_by_reason": self._summed_counts(reduce),
            "first_bad": [[b.index, b.path, b.reason, b.detail] for b in self.first_bad],
        }

    def load_state_dict(self, state: dict[str, Any] | None, epoch: int, keep_counts: bool = True) -> None:
        """Resume in ``epoch``: take the checkpoint's counts when they belong to that epoch.

        ``state`` is a :meth:`state_dict` (None for a checkpoint written without one: counting
        starts at zero). Its counts are already summed over ranks, so exactly one rank must keep
        them (``keep_counts=True`` on rank 0, False elsewhere) for the epoch-end sum to be right.
        Counts of another epoch (a checkpoint taken as an epoch ended) are not carried over.
        """
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)
        self.epoch_counts = Counter()
        if state is None or not keep_counts:
            return
        if not isinstance(state, dict) or not isinstance(state.get("bad_by_reason", {}), dict):
            raise ValueError(
                "the checkpoint's 'bad_samples' entry is not a BadSampleTracker.state_dict() "
                f"(got {type(state).__name__}); it was written by another program"
            )
        if int(state.get("epoch", -1)) == self.epoch:
            for reason, n in state.get("bad_by_reason", {}).items():
                self.epoch_counts[reason if reason in REASONS else "other"] += int(n)
        self.first_bad = [
            BadSample(int(index), str(path), str(reason), str(detail))
            for index, path, reason, detail in state.get("first_bad", [])
        ][: self.keep_paths]

    def check_epoch(self, record: dict[str, Any]) -> None:
        """Raise TooManyBadSamplesError when an :meth:`end_epoch` record exceeds the limit."""
        if record["bad_samples"] > self.allowed:
            where = f"in epoch {record['epoch']} (all ranks)"
            raise TooManyBadSamplesError(self._message(record["bad_samples"], record["bad_by_reason"], where))

    def summary_line(self, record: dict[str, Any]) -> str:
        """A console line for an :meth:`end_epoch` record."""
        first = "; ".join(b.describe() for b in self.first_bad[:3])
        return (
            f"epoch {record['epoch']}: skipped {record['bad_samples']} bad samples "
            f"({format_counts(record['bad_by_reason'])}; {self.allowed} allowed)" + (f"; first: {first}" if first else "")
        )

    def _message(self, count: int, counts: dict[str, int], where: str) -> str:
        cap = "null" if self.max_bad_samples is None else str(self.max_bad_samples)
        first = "; ".join(b.describe() for b in self.first_bad) or "(none recorded on this process)"
        return (
            f"too many bad samples: {count} {where} ({format_counts(counts)}), more than the {self.allowed} "
            f"allowed per epoch (data.max_bad_fraction={self.max_bad_fraction:g} of {self.samples_per_epoch} "
            f"samples, data.max_bad_samples={cap}). First bad samples: {first}. "
            "Fix or remove these files, or raise data.max_bad_fraction / data.max_bad_samples."
        )

    def postfix(self) -> dict[str, int]:
        """For a progress bar: ``{"bad": n}`` with this epoch's count on this process, or {} when none."""
        n = self.epoch_count
        return {"bad": n} if n else {}
