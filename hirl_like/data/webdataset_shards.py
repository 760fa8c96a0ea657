"""WebDataset tar shards streamed as image-caption pairs, split across ranks and loader workers.

Shards (img2dataset ``output_format=webdataset``) are tar files whose members are grouped into
samples by key: ``000000001.jpg`` + ``000000001.txt`` (+ ``.json``, ignored). ``urls`` takes brace
patterns (``shards/{00000..00331}.tar``), a list of them, or any URL ``webdataset.gopen`` opens
(``pipe:``, ``http(s)://``, ...). Tar parsing, key grouping and opening use the webdataset package.

Epoch plan (one pure function of the shard sizes, seed, epoch, world size, workers and batch size):

1. Shard order: a permutation of the shards drawn from ``(seed, epoch)``.
2. Concatenated in that order the shards form one sequence of N samples. Rank r gets the
   ``steps * B`` samples from position ``r * steps * B`` on, with ``steps = N // (world * B)``
   (the trainer's ``iters_per_epoch``); the tail of fewer than ``world * B`` samples is dropped,
   a different one each epoch, as a drop_last sampler does. Within a rank the range is cut into
   contiguous pieces of ``b_w * B`` samples for the W workers, ``b_w = len(range(w, steps, W))``.
   The DataLoader takes batches from workers round robin, so the rank yields exactly ``steps``
   full batches, and every rank the same number (data-parallel steps stay in lockstep).
3. A worker reads its piece shard by shard and mixes it through a seeded shuffle buffer.

So no sample is read twice in an epoch, whatever the number of shards. The pieces follow shard
boundaries only where they happen to fall: a shard cut between two workers is read in part by
both (the first part is read and skipped without decoding). With at least ``world * W`` shards
(recommended: many more) each worker mostly reads whole shards; with fewer shards, each worker
reads a part of one (sample-level splitting, more bytes read than used; a warning says so).

Shard sizes, in this order: ``sizes.json`` (``{"00000.tar": 10000, ...}``, open_clip's
convention) beside the shards or at ``sizes_file``; else a declared ``num_samples`` (shards are
then assumed equal, as img2dataset writes them apart from the last; a shard found shorter is
padded with ``shard_error`` bad samples so the epoch plan still holds, one found longer has its
surplus unread, with a warning naming the shard: prefer exact sizes); else the tar headers are
counted once and ``sizes.json`` is written. The file is not refreshed: delete it after changing
the shards (a shard grown since is read up to its listed size, with the same warning).

Bad samples (undecodable image, missing/empty caption, missing image member, unreadable part of a
shard) become :class:`~hirl_like.data.bad_samples.BadSample` sentinels: the collate function drops
and counts them, exactly as for map-style data.

Resume: a loader built with ``start_iteration = k`` replays the epoch plan and reads, without
decoding, the samples of the first k batches, so the rest of the epoch is exactly what an
uninterrupted run would have seen (at the cost of re-reading those bytes). The plan depends on
``num_workers``: resume with the same world size and number of workers.

Caption noise: a fixed fraction ~p of the samples (``u(seed, index) < p``, the same every epoch)
gets the caption of a recent sample of the same worker, drawn from a reservoir of the last
``caption_reservoir`` true captions with ``u'(seed, index, epoch)``; reproducible from the seed.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import re
import tarfile
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import braceexpand
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from hirl_like.data.bad_samples import (
    BadSample,
    BadSampleError,
    bad_sample,
    check_limit_args,
    clean_caption,
    decode_image,
)
from hirl_like.data.base import ImageCaptionDataset, Transform
from hirl_like.data.caption_folder import hash_uniform, make_pair_sample
from hirl_like.data.captions import mix_seed
from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.registry import DATASETS

IMAGE_MEMBER_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_MEMBER_EXTENSION = "txt"
SIZES_FILE = "sizes.json"

_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta pattern

_SALT_SHARD_ORDER = 0x5D01
_SALT_BUFFER = 0x5D02
_SALT_NOISY = 0x5D03
_SALT_RESERVOIR = 0x5D04


# --------------------------------------------------------------------------------------------
# shard lists and sizes
# --------------------------------------------------------------------------------------------
def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Brace-expanded shard list, in the given order; ``"a.tar::b.tar"`` splits as in open_clip."""
    if isinstance(urls, str):
        patterns = urls.split("::")
    elif isinstance(urls, Sequence) and all(isinstance(u, str) for u in urls):
        patterns = list(urls)
    else:
        raise ValueError(f"urls must be a string or a list of strings (config key data.urls), got {urls!r}")
    out = [u for p in patterns for u in braceexpand.braceexpand(p.strip()) if u]
    if not out:
        raise ValueError(f"data.urls={urls!r} names no shard")
    if len(set(out)) != len(out):
        raise ValueError(f"data.urls={urls!r} names some shard twice; every shard must appear once")
    return out


def is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:") or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def sample_key(name: str) -> str | None:
    """The sample a tar member belongs to (webdataset's rule: the name up to the basename's first
    dot), or None for members webdataset skips (``__meta__`` files, names without a dot)."""
    if (name.startswith("__") and "/" not in name and name.endswith("__")) or _META_MEMBER.match(name):
        return None
    return base_plus_ext(name)[0]


def count_tar_samples(path: str) -> int:
    """Samples in a local tar shard, from the member headers only (random access skips the data).

    A shard unreadable from some point on counts the samples before it (reading it later stops
    at the same point and reports the rest as ``shard_error``) and warns.
    """
    n, last = 0, None
    try:
        with tarfile.open(path, "r:*") as tf:
            for info in tf:
                if not info.isreg():
                    continue
                key = sample_key(info.name)
                if key is not None and key != last:
                    n, last = n + 1, key
    except (tarfile.TarError, OSError, EOFError) as err:
        warnings.warn(f"shard {path} is unreadable after {n} samples ({err}); counting {n}", stacklevel=2)
    return n


def _read_sizes(path: str) -> dict[str, int]:
    try:
        with open(path, encoding="utf-8") as f:
            sizes = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}
    return {str(k): int(v) for k, v in sizes.items()} if isinstance(sizes, dict) else {}


def _write_sizes(path: str, sizes: dict[str, int]) -> bool:
    """Atomic write; False when the folder is read-only (the counts are then recomputed next run)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(dict(sorted(sizes.items())), f, indent=0)
        os.replace(tmp, path)
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# the epoch plan
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------
@dataclass
class _RawSample:
    index: int  # stable id: offset of the shard (in url order) + position in the shard
    name: str  # "<url>#<key>" for reports
    members: dict[str, bytes]


@DATASETS.register("WebDatasetShards")
class WebDatasetShards(ImageCaptionDataset, IterableDataset):
    """Streams ``{"image"/crops..., "label": -1, "index", "text", "caption"}`` samples from tar shards.

    Args:
        urls: brace pattern(s) of the shards (config key ``data.urls``).
        num_samples: samples per epoch; None = sum of the shard sizes (from ``sizes.json`` or counted).
        sizes_file: where shard sizes are read from / cached; None = ``sizes.json`` beside the first shard.
        shuffle_buffer: samples mixed per worker after shard shuffling (0 or 1 = no mixing).
        caption_reservoir: recent captions a noisy caption is drawn from.
        transform, tokenizer, seed, caption_noise, max_bad_fraction, max_bad_samples: as for the
            map-style caption datasets.

    ``len(dataset)`` is the number of samples per epoch. Iterate it through
    :func:`hirl_like.data.loader.build_train_loader`, which calls :meth:`set_epoch` and
    :meth:`set_stream_split`; iterated directly it yields every sample of the epoch once.
    """

    classnames = ()

    def __init__(
        self,
        urls: str | list[str],
        num_samples: int | None = None,
        sizes_file: str | None = None,
        shuffle_buffer: int = 1000,
        caption_reservoir: int = 512,
        transform: Transform | None = None,
        tokenizer: ClipTokenizer | None = None,
        caption_noise: float = 0.0,
        seed: int = 0,
        max_bad_fraction: float = 0.01,
        max_bad_samples: int | None = None,
    ) -> None:
        super().__init__(transform=transform, tokenizer=tokenizer, caption_noise=caption_noise, seed=seed)
        check_limit_args(max_bad_fraction, max_bad_samples)
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
            raise ValueError(f"num_samples must be a positive int or null (count the shards), got {num_samples!r}")
        if not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be an int >= 0 (samples), got {shuffle_buffer!r}")
        if not isinstance(caption_reservoir, int) or caption_reservoir < 1:
            raise ValueError(f"caption_reservoir must be a positive int (captions), got {caption_reservoir!r}")
        self.max_bad_fraction = float(max_bad_fraction)
        self.max_bad_samples = max_bad_samples
        self.shuffle_buffer = shuffle_buffer
        self.caption_reservoir = caption_reservoir
        self.urls = expand_urls(urls)
        missing = [u for u in self.urls if is_local(u) and not os.path.isfile(local_path(u))]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.urls)} shards not found: {shown}. Set the config key data.urls to "
                "the tar shards, e.g. data.urls='datasets/cc3m/shards/{00000..00331}.tar'"
            )
        self.sizes_file = sizes_file
        self.counts, self.exact_counts = self._shard_sizes(num_samples)
        self.num_samples = sum(self.counts)
        self._offsets = [0]
        for c in self.counts:
            self._offsets.append(self._offsets[-1] + c)
        # Set by the loader; the defaults make plain iteration yield the whole epoch once.
        self.rank, self.world_size, self.batch_size, self.start_batch = 0, 1, 1, 0
        self.num_workers: int | None = None

    # -- sizes --------------------------------------------------------------------------------
    def _default_sizes_file(self) -> str | None:
        if self.sizes_file is not None:
            return self.sizes_file
        if all(is_local(u) for u in self.urls):
            return os.path.join(os.path.dirname(os.path.abspath(local_path(self.urls[0]))), SIZES_FILE)
        return None

    def _size_key(self, url: str, sizes_path: str | None) -> str:
        """A shard's name in the sizes file: its path relative to that file's folder (the bare
        file name for shards beside it, as open_clip writes them), else its URL's last part."""
        if sizes_path is not None and is_local(url):
            return os.path.relpath(os.path.abspath(local_path(url)), os.path.dirname(os.path.abspath(sizes_path)))
        return os.path.basename(url)

    def _shard_sizes(self, num_samples: int | None) -> tuple[list[int], bool]:
        path = self._default_sizes_file()
        known = _read_sizes(path) if path and os.path.isfile(path) else {}
        names = [self._size_key(u, path) for u in self.urls]
        if all(n in known for n in names):
            counts = [known[n] for n in names]
            if num_samples is not None and num_samples != sum(counts):
                raise ValueError(
                    f"data.num_samples={num_samples} but {path} lists {sum(counts)} samples in these shards; "
                    "fix one of them (or set num_samples: null to use the file)"
                )
            return counts, True
        if num_samples is not None:  # declared: assume equal shards
            if num_samples < len(self.urls):
                raise ValueError(f"data.num_samples={num_samples} is fewer than the {len(self.urls)} shards")
            base, extra = divmod(num_samples, len(self.urls))
            return [base + (1 if i < extra else 0) for i in range(len(self.urls))], False
        remote = [u for u in self.urls if not is_local(u)]
        if remote:
            raise ValueError(
                f"cannot count samples in remote shards ({remote[0]!r}, ...); declare data.num_samples or give "
                f"data.sizes_file (a JSON {{shard file name: sample count}})"
            )
        for url, name in zip(self.urls, names):
            if name not in known:
                known[name] = count_tar_samples(local_path(url))
        if path is not None and not _write_sizes(path, known):
            warnings.warn(f"could not write shard sizes to {path}; they will be counted again next time", stacklevel=3)
        return [known[n] for n in names], True

    # -- epoch and split ----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        raise TypeError("WebDatasetShards is streamed: iterate it (build_train_loader) instead of indexing")

    @property
    def targets(self) -> list[int]:
        raise ValueError("WebDatasetShards holds image-caption pairs without class labels")

    def steps_per_epoch(self, world_size: int, batch_size: int) -> int:
        return self.num_samples // (world_size * batch_size)

    def set_stream_split(
        self, rank: int = 0, world_size: int = 1, num_workers: int = 0, batch_size: int = 1, start_batch: int = 0
    ) -> None:
        """Select this rank's share for DataLoader workers and batches of ``batch_size``, skipping
        the first ``start_batch`` batches of the epoch (mid-epoch resume)."""
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        steps = self.steps_per_epoch(world_size, batch_size)
        if steps == 0:
            raise ValueError(
                f"{self.num_samples} samples are fewer than one global batch ({batch_size} x {world_size} ranks); "
                "lower the batch size"
            )
        if not isinstance(start_batch, int) or not 0 <= start_batch <= steps:
            raise ValueError(f"start_batch must be in [0, {steps}] (steps per epoch), got {start_batch!r}")
        slots = world_size * max(1, num_workers)
        if len(self.urls) < slots:
            warnings.warn(
                f"{len(self.urls)} shards for {world_size} rank(s) x {max(1, num_workers)} worker(s): every worker reads "
                "part of a shard and skips the rest (sample-level splitting, more bytes read than used); "
                f"write at least {slots} shards",
                stacklevel=2,
            )
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.num_workers, self.start_batch = num_workers, start_batch

    def shard_order(self) -> list[int]:
        """This epoch's shard permutation, from (seed, epoch) only."""
        order = list(range(len(self.urls)))
        random.Random(mix_seed(self.seed, _SALT_SHARD_ORDER, self.epoch)).shuffle(order)
        return order

    # -- reading ------------------------------------------------------------------------------
    def _read_segment(self, seg: Segment) -> Iterator[_RawSample | BadSample]:
        """Exactly ``seg.end - seg.start`` items: the samples, then ``shard_error`` padding if the
        shard ends early or breaks."""
        url = self.urls[seg.shard]
        produced = 0
        state = {"key": None, "ordinal": -1}

        def select(name: str) -> bool:  # called for each member before its data is read
            key = sample_key(name)
            if key is None:
                return False
            if key != state["key"]:
                state["key"], state["ordinal"] = key, state["ordinal"] + 1
            return state["ordinal"] >= seg.start  # skipped members are passed over unread

        error = "shard ended early"
        try:
            stream = gopen(url, "rb")
        except Exception as err:  # noqa: BLE001 - any opener failure is a shard_error
            stream, error = None, f"cannot open: {err}"
        if stream is not None:
            current: _RawSample | None = None
            current_key = None
            try:
                for member in tar_file_iterator(stream, select_files=select):
                    ordinal = state["ordinal"]  # select() just ran for this member
                    key, ext = base_plus_ext(member["fname"])
                    if current is None or key != current_key:
                        if current is not None:
                            yield current
                            produced += 1
                        if ordinal >= seg.end:
                            if seg.end == self.counts[seg.shard]:  # the shard's last planned sample was read
                                self._warn_surplus(url, seg.shard)
                            current = None
                            break
                        current = _RawSample(self._offsets[seg.shard] + ordinal, f"{url}#{key}", {})
                        current_key = key
                    current.members[ext.lower()] = member["data"]
                if current is not None:
                    yield current
                    produced += 1
            except (tarfile.TarError, OSError, EOFError, ValueError) as err:
                error = f"unreadable after {seg.start + produced} samples: {err}"
            finally:
                stream.close()
        for k in range(produced, seg.end - seg.start):
            yield BadSample(self._offsets[seg.shard] + seg.start + k, f"{url}#{seg.start + k}", "shard_error", error)

    def _warn_surplus(self, url: str, shard: int) -> None:
        """Warn that shard ``shard`` holds more samples than the epoch plan gives it: the surplus
        is not read, so the data would otherwise shrink silently."""
        if self.exact_counts:
            source = f"listed in {self._default_sizes_file() or 'the sizes file'}"
            fix = "the sizes file is stale: delete it to have the shards counted again"
        else:
            source = f"assumed from data.num_samples={self.num_samples} over {len(self.urls)} shards"
            fix = f"write exact sizes to {SIZES_FILE} (or data.sizes_file), or set data.num_samples: null for local shards"
        warnings.warn(
            f"shard {url} holds more than the {self.counts[shard]} samples {source}; the surplus is not read. {fix}",
            stacklevel=2,
        )

    def _decode(self, raw: _RawSample, caption: str) -> dict[str, Any] | BadSample:
        ext = next((e for e in IMAGE_MEMBER_EXTENSIONS if e in raw.members), None)
        try:
            if ext is None:
                raise BadSampleError("missing_image", f"members: {sorted(raw.members)}")
            img = decode_image(raw.members[ext])
        except BadSampleError as err:
            return bad_sample(raw.index, raw.name, err)
        return make_pair_sample(self, img, caption, raw.index)

    def __iter__(self) -> Iterator[dict[str, Any] | BadSample]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 0)
        if self.num_workers is not None and workers != self.num_workers:
            raise ValueError(
                f"set_stream_split planned {self.num_workers} workers but the DataLoader runs {workers}; "
                "build the loader with build_train_loader"
            )
        roles = max(1, workers)
        steps = self.steps_per_epoch(self.world_size, self.batch_size)
        role = (worker + self.start_batch) % roles  # the DataLoader's round robin starts at worker 0
        skip = role_batches(role, self.start_batch, roles) * self.batch_size
        segments = plan_segments(self.counts, self.shard_order(), self.rank, role, steps, roles, self.batch_size)
        raw = (item for seg in segments for item in self._read_segment(seg))
        rng = random.Random(mix_seed(self.seed, _SALT_BUFFER, self.epoch, self.rank, role))
        recent: deque[str] = deque(maxlen=self.caption_reservoir)
        # Global RNGs are never drawn from here (the buffer has its own, the transform is seeded
        # and restored per sample), so the order is the plan's whatever the caller does.
        for position, item in enumerate(shuffle_buffer(raw, self.shuffle_buffer, rng)):
            if isinstance(item, BadSample):
                if position >= skip:
                    yield item
                continue
            try:
                own = clean_caption(item.members.get(CAPTION_MEMBER_EXTENSION))
            except BadSampleError as err:
                if position >= skip:
                    yield bad_sample(item.index, item.name, err)
                continue
            caption = own
            if self.caption_noise > 0 and recent and hash_uniform(self.seed, _SALT_NOISY, item.index) < self.caption_noise:
                pick = int(hash_uniform(self.seed, _SALT_RESERVOIR, item.index, self.epoch) * len(recent))
                caption = recent[pick]
            recent.append(own)  # skipped (already consumed) samples still feed the reservoir: exact resume
            if position >= skip:
                yield self._decode(item, caption)

    def __repr__(self) -> str:
        return (
            f"WebDatasetShards({len(self.urls)} shards, n={self.num_samples}, exact_counts={self.exact_counts}, "
            f"epoch={self.epoch}, seed={self.seed}, caption_noise={self.caption_noise})"
        )

