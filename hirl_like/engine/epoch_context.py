"""What the trainer offers a pipeline before training and at the start of every epoch.

Most objectives only see batches. A few need the run as a whole: HIRL re-clusters the whole
training set every few epochs, and must refuse, before any step, settings the run cannot meet
(more clusters than images, a warm-up past the last epoch). The trainer calls, when the pipeline
has them:

    pipeline.check_run(RunInfo)                   once, after the data is built, before resuming
    pipeline.on_epoch_start(epoch, EpochContext)  before the first step of every epoch, also when
                                                  a run resumes in the middle of that epoch

An ``on_epoch_start`` hook must be idempotent for a resumed epoch (keep what it computed in the
checkpoint, e.g. the epoch it clustered at) and must not draw from the global RNG (the context's
:meth:`EpochContext.embed_training_set` already leaves it untouched), so a resumed run stays
bit-exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from hirl_like.data.bad_samples import BAD_KEY
from hirl_like.data.build import build_eval_dataset
from hirl_like.data.loader import build_eval_loader
from hirl_like.evaluation.features import extract_features


@dataclass(frozen=True)
class RunInfo:
    """The run a pipeline is about to train: ``num_samples`` training images, ``epochs`` (the
    schedule's length, also when ``max_iterations`` stops it early), ``iters_per_epoch``."""

    num_samples: int
    epochs: int
    iters_per_epoch: int


class EpochContext:
    """Handed to ``pipeline.on_epoch_start``: this process's place in the job, the run's seed,
    a logger, and :meth:`embed_training_set`."""

    def __init__(
        self,
        cfg: DictConfig,
        device: torch.device,
        rank: int,
        world_size: int,
        log: Callable[[dict[str, Any]], None],
        num_train_samples: int,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.is_main = rank == 0
        self.seed = int(cfg.seed)
        self.log = log
        self._num_train_samples = num_train_samples

    def embed_training_set(self, forward: Callable[[Tensor], Tensor], batch_size: int | None = None) -> Tensor:
        """(N, D) float32 CPU features of every training image, row i = dataset index i, identical
        on every rank.

        The images are the training data under the evaluation transform (resize + centre crop at
        the backbone's size, no augmentation); each rank embeds its own contiguous shard (no
        padded duplicates) and the shards are all-gathered. ``forward`` maps (B, 3, H, W) images on
        :attr:`device` to (B, D); put its model in eval mode first. Images the reader cannot
        decode (skipped by training as well) get a zero row. The global RNG is left as it was.
        """
        with torch.random.fork_rng(devices=[]):  # a loader iterator draws its base seed from it
            dataset = build_eval_dataset(self.cfg, str(self.cfg.data.get("split", "train")))
            if len(dataset) != self._num_train_samples:
                raise ValueError(
                    f"the training data under the evaluation transform has {len(dataset)} images, the training "
                    f"dataset {self._num_train_samples}: they must be the same images in the same order."
                )
            loader = build_eval_loader(
                dataset, batch_size or int(self.cfg.batch_size), int(self.cfg.num_workers),
                rank=self.rank, world_size=self.world_size,
            )
            feats, indices = extract_features(forward, _indices_as_labels(loader), self.device)
        out = torch.zeros(self._num_train_samples, feats.shape[1], dtype=torch.float32)
        out[indices] = feats.float()
        return out


def _indices_as_labels(loader: Any) -> Iterator[Mapping[str, Any]]:
    """Batches whose ``label`` is the dataset index (so the features come back with their indices)
    and without the list of undecodable samples (clustering leaves them out; training skips them)."""
    for batch in loader:
        batch = dict(batch)
        batch.pop(BAD_KEY, None)
        batch["label"] = batch["index"]
        yield batch
