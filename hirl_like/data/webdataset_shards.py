"""WebDataset tar shards streamed as image-caption pairs, split across ranks and loader workers.

Shards (img2dataset ``output_format=webdataset``) are tar files whose members are grouped into
samples by key: ``000000001.jpg`` + ``000000001.txt`` (+ ``.json``, ignored). ``urls`` takes brace
patterns (``shards/{00000..00331}.tar``), a list of them, or any URL ``webdataset.gopen`` opens
(``http(s)://``, ...; :mod:`hirl_like.data.shard_urls`). ``pipe:`` URLs run a shell command and are
refused unless the command line says ``--allow-pipe-urls`` (:mod:`hirl_like.data.pipe_urls`). Tar
parsing and key grouping use the webdataset package (:mod:`hirl_like.data.tar_shards`).

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

Shard sizes (:mod:`hirl_like.data.shard_sizes`), in this order: ``sizes.json``
(``{"00000.tar": 10000, ...}``, open_clip's convention) beside the shards or at ``sizes_file``;
else a declared ``num_samples`` (shards are then assumed equal, as img2dataset writes them apart
from the last; a shard found shorter is padded with ``shard_error`` bad samples so the epoch plan
still holds, one found longer has its surplus unread, with a warning naming the shard: prefer
exact sizes); else the tar headers are counted once and ``sizes.json`` is written. The file is not
refreshed: delete it after changing the shards (a shard grown since is read up to its listed size,
with the same warning).

Bad samples (undecodable image, missing/empty caption, missing image member, unreadable part of a
shard) become :class:`~hirl_like.data.bad_samples.BadSample` sentinels: the collate function drops
and counts them, exactly as for map-style data. Without a tokenizer (vision-only methods) a
missing or empty caption is no bad sample: the sample's ``caption`` is "".

Resume: a loader built with ``start_iteration = k`` replays the epoch plan and reads, without
decoding, the samples of the first k batches, so the rest of the epoch is exactly what an
uninterrupted run would have seen (at the cost of re-reading those bytes). The plan depends on
``num_workers``: resume with the same world size and number of workers.

Caption noise: a fixed fraction ~p of the samples (``u(seed, index) < p``, the same every epoch)
gets the caption of a recent sample of the same worker, drawn from a reservoir of the last
``caption_reservoir`` true captions with ``u'(seed, index, epoch)``; reproducible from the seed.
"""

from __future__ import annotations

import os
import random
import tarfile
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from hirl_like.data.bad_samples import (
    BadSample,
    BadSampleError,
    bad_sample,
    check_limit_args,
    clean_caption,
)
from hirl_like.data.base import ImageCaptionDataset, Transform
from hirl_like.data.caption_folder import hash_uniform, make_pair_sample
from hirl_like.data.captions import mix_seed
from hirl_like.data.decode import decode_image
from hirl_like.data.pipe_urls import check_command_urls
from hirl_like.data.shard_plan import Segment, plan_segments, role_batches, shuffle_buffer
from hirl_like.data.shard_sizes import shard_sizes, sizes_file_for
from hirl_like.data.shard_urls import expand_urls, is_local, local_path, open_shard
from hirl_like.data.tar_shards import SIZES_FILE, count_tar_samples, sample_key
from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.registry import DATASETS

__all__ = [  # the helpers live in their own modules; re-exported for callers of this one
    "WebDatasetShards", "Segment", "count_tar_samples", "expand_urls", "is_local", "local_path",
    "plan_segments", "role_batches", "sample_key", "shuffle_buffer",
]

IMAGE_MEMBER_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_MEMBER_EXTENSION = "txt"

_SALT_SHARD_ORDER = 0x5D01
_SALT_BUFFER = 0x5D02
_SALT_NOISY = 0x5D03
_SALT_RESERVOIR = 0x5D04


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
        check_command_urls(self.urls, key="data.urls")  # a pipe: URL runs a shell command
        missing = [u for u in self.urls if is_local(u) and not os.path.isfile(local_path(u))]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.urls)} shards not found: {shown}. Set the config key data.urls to "
                "the tar shards, e.g. data.urls='datasets/cc3m/shards/{00000..00331}.tar'"
            )
        self.sizes_file = sizes_file
        self.counts, self.exact_counts = shard_sizes(self.urls, num_samples, sizes_file)
        self.num_samples = sum(self.counts)
        self._offsets = [0]
        for c in self.counts:
            self._offsets.append(self._offsets[-1] + c)
        # Set by the loader; the defaults make plain iteration yield the whole epoch once.
        self.rank, self.world_size, self.batch_size, self.start_batch = 0, 1, 1, 0
        self.num_workers: int | None = None

    def _default_sizes_file(self) -> str | None:
        return sizes_file_for(self.urls, self.sizes_file)

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
            stream = open_shard(url)  # refuses a pipe: URL unless --allow-pipe-urls
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
                if self.tokenizer is not None:  # only a text tower needs captions
                    if position >= skip:
                        yield bad_sample(item.index, item.name, err)
                    continue
                if position >= skip:
                    yield self._decode(item, "")
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

