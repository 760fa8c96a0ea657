"""Online evaluation while training: a cheap weighted k-NN and collapse indicators (config node ``online_eval``).

**k-NN** (``online_eval.knn_every``, a :data:`~hirl_like.schedules.Span`: a number of epochs, or a
share of the run like ``'10%'``; 0 = off). Every that many iterations (rounded, at least 1) and
after the last iteration of the run, the vision tower (``towers: exported``: the one
``main_vit_checkpoint.pth`` holds, the EMA teacher when the method has one; ``student``: the
student) embeds, in eval mode, without gradient and under the run's autocast,

* a bank: ``train_samples`` images of the training split under the evaluation transform
  (:func:`~hirl_like.data.build.build_eval_dataset`: resize + centre crop, no augmentation), and
* queries: ``val_samples`` images of ``val_split`` (Digits ``val``, FashionMNIST ``val`` = its test
  file). When ``val_split`` is null, equals the training split, or the dataset cannot be built at
  it, the queries are held out from the training split instead, disjoint from the bank.

Both are fixed random subsets, a pure function of ``seed`` (:func:`knn_slices`), so every
evaluation of a run scores the same images. The score is DINO's weighted k-NN
(:func:`~hirl_like.evaluation.knn.knn_classify`, exact torch search, ``knn_k`` neighbours, votes
``exp(cos / knn_temperature)``); rank 0 logs ``{"type": "online_knn", "iteration", "epoch", "top1",
"top5", ...}`` to ``log.jsonl`` and TensorBoard (``online_knn/top1`` at step = iteration) and shows
top-1 on the progress bar. Every rank embeds its shard of the images (the features are
all-gathered, :func:`~hirl_like.evaluation.features.extract_features`), so every rank must call
:meth:`OnlineEval.after_step`.

**Collapse indicators** (``collapse_indicators: true``, every ``log_interval`` iterations and at the
last one): the student vision tower embeds the batch's first view (``global_crops[0]``, else
``image``) once more, under no_grad and in the mode the objectives see it (training mode:
BatchNorm normalises by the batch, whose running statistics are put back afterwards; drop path
on), and rank 0 logs ``{"type": "collapse", "effective_rank", "embedding_std",
"embedding_std_ratio", ...}`` (:mod:`hirl_like.evaluation.collapse`). The record also copies the
teacher-target diagnostics the step's objectives report (``dino/target_entropy_ratio``,
``dino/batch_target_entropy``, ``ibot/cls_target_entropy_ratio``, ...: DINOLoss and IBOTLoss compute
them from the targets they already form). The cost is one forward of one view of one batch per
log window. A :class:`~hirl_like.evaluation.collapse.CollapseDetector` prints one warning line when
an indicator stays past its threshold for ``collapse_warn_after`` checks in a row (also logged as a
``collapse_warning`` record).

Exact resume: everything here runs under :func:`rng_untouched` (torch's CPU and CUDA generators,
Python's and NumPy's), the models go back to their modes and BatchNorm statistics are restored, so
a run with online evaluation takes exactly the steps of one without it, and resumes bit-exactly.
The detector's counts are not checkpointed: a resumed run starts counting again.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset, Subset

from hirl_like.data.bad_samples import BAD_KEY
from hirl_like.data.build import build_eval_dataset
from hirl_like.data.captions import mix_seed
from hirl_like.data.loader import build_eval_loader
from hirl_like.evaluation.collapse import THRESHOLDS, CollapseDetector, embedding_indicators
from hirl_like.evaluation.features import extract_features
from hirl_like.evaluation.knn import knn_classify
from hirl_like.schedules import Progress, Span, check_span

_SALT_KNN = 0x0E7A1  # the k-NN slices' seed, apart from every other use of the run's seed
TOWERS = ("exported", "student")


@dataclass(frozen=True)
class OnlineEvalConfig:
    """The ``online_eval`` node (defaults as in ``hirl_like/defaults.yaml``)."""

    knn_every: Span = 0
    knn_k: int = 20
    knn_temperature: float = 0.07
    train_samples: int = 2000
    val_samples: int = 1000
    val_split: str | None = "val"
    towers: str = "exported"
    batch_size: int = 256
    collapse_indicators: bool = True
    collapse_warn_after: int = 5

    @classmethod
    def from_node(cls, node: Mapping[str, Any] | DictConfig | None) -> "OnlineEvalConfig":
        """From a config node (None: the defaults, for configs loaded without ``defaults.yaml``).
        The config loader has validated it already; this re-checks what a hand-made node could get wrong."""
        if node is None:
            return cls()
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown online_eval keys {unknown}; valid keys: {', '.join(known)}.")
        out = cls(**values)
        check_span(out.knn_every, "online_eval.knn_every")
        if out.towers not in TOWERS:
            raise ValueError(f"online_eval.towers={out.towers!r}: choose one of {', '.join(TOWERS)}.")
        for name in ("knn_k", "train_samples", "val_samples", "batch_size"):
            if int(getattr(out, name)) < 1:
                raise ValueError(f"online_eval.{name} must be >= 1, got {getattr(out, name)!r}.")
        if not out.knn_temperature > 0:
            raise ValueError(f"online_eval.knn_temperature must be > 0, got {out.knn_temperature!r}.")
        return out


def knn_interval(every: Span, iters_per_epoch: int, schedule_iterations: int) -> int:
    """Iterations between two k-NN evaluations for ``knn_every`` (epochs or a share of the whole
    schedule, :meth:`Progress.iterations`), rounded and at least 1; 0 when ``every`` is 0 (off)."""
    iterations = Progress(0, iters_per_epoch, schedule_iterations).iterations(check_span(every, "online_eval.knn_every"))
    return 0 if iterations <= 0 else max(1, round(iterations))


def knn_slices(bank_size: int, query_size: int | None, train_samples: int, val_samples: int, seed: int) -> tuple[list[int], list[int]]:
    """(bank indices, query indices), each sorted: fixed random subsets, a pure function of the arguments.

    ``bank_size`` images in the training split, ``query_size`` in the query split, or None when the
    queries are held out from the training split: then both come from one permutation of it, the
    bank first, so they are disjoint; when the split has fewer than ``train_samples +
    val_samples`` images they share it in proportion (at least one each).
    """
    generator = torch.Generator().manual_seed(mix_seed(seed, _SALT_KNN) >> 1)
    order = torch.randperm(bank_size, generator=generator).tolist()
    if query_size is not None:
        queries = torch.randperm(query_size, generator=generator).tolist()
        return sorted(order[:train_samples]), sorted(queries[:val_samples])
    if bank_size < 2:
        raise ValueError(f"online k-NN with queries held out of the training split needs >= 2 images, it has {bank_size}.")
    n_bank = train_samples
    if train_samples + val_samples > bank_size:
        n_bank = min(max(1, round(bank_size * train_samples / (train_samples + val_samples))), bank_size - 1)
    return sorted(order[:n_bank]), sorted(order[n_bank:n_bank + val_samples])


@contextlib.contextmanager
def rng_untouched(device: torch.device | None = None) -> Iterator[None]:
    """Run the body, then put back torch's CPU generator (and ``device``'s CUDA generator), Python's
    and NumPy's global RNG states: whatever it draws (a loader's base seed, drop path), the run's
    random stream is unchanged."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if (
        device is not None and device.type == "cuda") else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def first_view(batch: Mapping[str, Any]) -> Tensor | None:
    """The images of the batch's first view: ``global_crops[0]``, else ``image``; None when it has neither."""
    crops = batch.get("global_crops")
    if isinstance(crops, (list, tuple)) and crops and isinstance(crops[0], Tensor):
        return crops[0]
    image = batch.get("image")
    return image if isinstance(image, Tensor) else None


@torch.no_grad()
def student_indicators(student: nn.Module, images: Tensor, autocast: Callable[[], Any] = contextlib.nullcontext) -> dict[str, float]:
    """:func:`~hirl_like.evaluation.collapse.embedding_indicators` of ``student(images)`` (B, D), run in
    the student's current mode, with its buffers (BatchNorm running statistics) put back afterwards."""
    buffers = [(b, b.detach().clone()) for b in student.buffers()]
    try:
        with autocast():
            z = student(images)
    finally:
        for buffer, saved in buffers:
            buffer.copy_(saved)
    if z.ndim != 2:
        raise ValueError(f"the student vision tower gave features of shape {tuple(z.shape)}; expected (B, D).")
    return embedding_indicators(z.float())


def _drop_bad(loader: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Batches without their list of unreadable samples (skipped here, as training skips them)."""
    for batch in loader:
        batch = dict(batch)
        batch.pop(BAD_KEY, None)
        yield batch


def _num_classes(dataset: Any, labels: Tensor) -> int:
    return len(getattr(dataset, "classnames", ()) or ()) or int(labels.max()) + 1


class OnlineKNN:
    """The fixed bank and queries of a run and the k-NN on them (see the module docstring).

    ``train_split``: the split the training data reads (its dataset's ``split``). Prints one line on
    rank 0 when the queries are held out of the training split although ``val_split`` was set.
    """

    def __init__(self, cfg: DictConfig, settings: OnlineEvalConfig, train_split: str | None, rank: int = 0,
                 world_size: int = 1) -> None:
        self.settings, self.rank, self.world_size = settings, rank, world_size
        self.num_workers = int(cfg.get("num_workers", 0))
        try:
            bank = build_eval_dataset(cfg, train_split)
        except (ValueError, TypeError, OSError) as err:
            raise ValueError(
                f"online_eval.knn_every={settings.knn_every!r}: the k-NN bank is the training data (data.name="
                f"{cfg.data.get('name')!r}, split {train_split!r}) under the evaluation transform, which cannot be "
                f"built: {str(err).splitlines()[0] if str(err) else type(err).__name__}. Set online_eval.knn_every=0."
            ) from None
        if isinstance(bank, IterableDataset):
            raise ValueError(
                f"online_eval.knn_every needs a map-style labelled dataset; {type(bank).__name__} is streamed. "
                "Set online_eval.knn_every=0 and evaluate the exports afterwards."
            )
        queries: Dataset | None = None
        self.val_split = settings.val_split
        if settings.val_split is not None and settings.val_split != train_split:
            try:
                queries = build_eval_dataset(cfg, settings.val_split)
            except (ValueError, TypeError, OSError) as err:
                if rank == 0:
                    print(f"online k-NN: data.name={cfg.data.get('name')!r} has no split {settings.val_split!r} "
                          f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); its queries are held out "
                          "of the training split instead.", file=sys.stderr, flush=True)
        if queries is None:
            self.val_split = None
        bank_idx, query_idx = knn_slices(len(bank), None if queries is None else len(queries),  # type: ignore[arg-type]
                                         settings.train_samples, settings.val_samples, int(cfg.seed))
        self.bank = Subset(bank, bank_idx)
        self.queries = Subset(queries if queries is not None else bank, query_idx)
        self.classes_of = bank

    def features(self, forward: Callable[[Tensor], Tensor], subset: Subset, device: torch.device) -> tuple[Tensor, Tensor]:
        loader = build_eval_loader(subset, self.settings.batch_size, self.num_workers, rank=self.rank,
                                   world_size=self.world_size)
        return extract_features(forward, _drop_bad(loader), device)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device, autocast: Callable[[], Any] = contextlib.nullcontext) -> dict[str, Any] | None:
        """Top-1 / top-5 of ``model`` (put in eval mode by the caller); every rank must call it
        (the features are gathered); the scores come back on rank 0, None elsewhere."""
        def forward(images: Tensor) -> Tensor:
            with autocast():
                return model(images)

        bank_x, bank_y = self.features(forward, self.bank, device)
        query_x, query_y = self.features(forward, self.queries, device)
        if self.rank != 0:
            return None
        k = self.settings.knn_k
        scores = knn_classify(bank_x, bank_y, query_x, query_y, _num_classes(self.classes_of, bank_y), ks=(k,),
                              temperature=self.settings.knn_temperature, use_faiss=False)[k]
        return {"top1": scores["top1"], "top5": scores["top5"], "k": k, "temperature": self.settings.knn_temperature,
                "train_samples": len(bank_y), "val_samples": len(query_y), "val_split": self.val_split}


def _tower(pipeline: nn.Module, towers: str) -> nn.Module:
    if towers == "student":
        return pipeline.backbones.student_vision
    return pipeline.export_vision()


class OnlineEval:
    """What the trainer calls after every step: :meth:`after_step` (a collective when a k-NN is due:
    every rank calls it) and :meth:`postfix` (for the progress bar).

    Args:
        cfg: the run's config (``online_eval``, ``data``, ``seed``, ``num_workers``, ``log_interval``).
        pipeline: the unwrapped pipeline (``backbones.student_vision``, ``export_vision()``).
        train_split: the split the training dataset reads.
        device, rank, world_size: this process.
        iters_per_epoch, schedule_iterations, total_iterations: the run's length (``knn_every`` is a
            span of the schedule; ``total_iterations`` is where the run stops).
        log: ``log(record, step=iteration)`` (the trainer's logger: a no-op off rank 0).
        autocast: the run's forward autocast context.
    """

    def __init__(
        self,
        cfg: DictConfig,
        pipeline: nn.Module,
        *,
        train_split: str | None,
        device: torch.device,
        rank: int,
        world_size: int,
        iters_per_epoch: int,
        schedule_iterations: int,
        total_iterations: int,
        log: Callable[..., None],
        autocast: Callable[[], Any] = contextlib.nullcontext,
    ) -> None:
        self.settings = OnlineEvalConfig.from_node(cfg.get("online_eval"))
        self.pipeline, self.device, self.rank = pipeline, device, rank
        self.iters_per_epoch, self.total_iterations = iters_per_epoch, total_iterations
        self.log_interval = int(cfg.log_interval)
        self.log, self.autocast = log, autocast
        self.interval = knn_interval(self.settings.knn_every, iters_per_epoch, schedule_iterations)
        self.knn = OnlineKNN(cfg, self.settings, train_split, rank, world_size) if self.interval else None
        self.detector = CollapseDetector(int(self.settings.collapse_warn_after))
        self.last_top1: float | None = None

    @classmethod
    def for_trainer(cls, trainer: Any) -> "OnlineEval":
        """The online evaluation of a :class:`~hirl_like.engine.trainer.Trainer` (built, logger included)."""
        return cls(
            trainer.cfg, trainer.pipeline, train_split=train_split_of(trainer.dataset, trainer.cfg), device=trainer.device,
            rank=trainer.dist.rank, world_size=trainer.dist.world_size, iters_per_epoch=trainer.iters_per_epoch,
            schedule_iterations=trainer.schedule_iterations, total_iterations=trainer.total_iterations,
            log=trainer.logger.log, autocast=trainer.stepper.autocast,
        )

    # -- when -----------------------------------------------------------------------------------
    def knn_due(self, iteration: int) -> bool:
        """After ``iteration`` iterations: every ``interval`` and at the end of the run."""
        return bool(self.interval) and (iteration % self.interval == 0 or iteration == self.total_iterations)

    def collapse_due(self, iteration: int) -> bool:
        return self.settings.collapse_indicators and (
            iteration % self.log_interval == 0 or iteration == self.total_iterations)

    def postfix(self) -> dict[str, str]:
        return {} if self.last_top1 is None else {"knn": f"{self.last_top1:.1f}"}

    # -- what -----------------------------------------------------------------------------------
    def after_step(self, iteration: int, batch: Mapping[str, Any], values: Mapping[str, float] | None) -> None:
        """Run what is due after ``iteration`` iterations; ``batch`` is the step's batch, ``values``
        its logged scalars (None for a skipped step)."""
        knn, collapse = self.knn_due(iteration), self.collapse_due(iteration)
        if not (knn or collapse):
            return
        was_training = self.pipeline.training
        try:
            with rng_untouched(self.device):
                if collapse:
                    self._collapse(iteration, batch, values)
                if knn:
                    self._knn(iteration)
        finally:
            self.pipeline.train(was_training)  # ComposedPipeline.train keeps the teachers in eval mode

    def _epoch(self, iteration: int) -> float:
        return round(iteration / self.iters_per_epoch, 4)

    def _knn(self, iteration: int) -> None:
        assert self.knn is not None
        tic = time.time()
        tower = _tower(self.pipeline, self.settings.towers)
        tower.eval()
        scores = self.knn.evaluate(tower, self.device, self.autocast)
        if scores is None:  # not rank 0
            return
        self.last_top1 = float(scores["top1"])
        self.log({"type": "online_knn", "iteration": iteration, "epoch": self._epoch(iteration), **scores,
                  "towers": self.settings.towers, "seconds": round(time.time() - tic, 3)}, step=iteration)

    def _collapse(self, iteration: int, batch: Mapping[str, Any], values: Mapping[str, float] | None) -> None:
        record: dict[str, Any] = {}
        images = first_view(batch)
        student = getattr(getattr(self.pipeline, "backbones", None), "student_vision", None)
        if images is not None and student is not None and images.shape[0] >= 2:
            record.update(student_indicators(student, images.to(self.device, non_blocking=True), self.autocast))
        suffixes = tuple(check.key[1:] for check in THRESHOLDS if check.key.startswith("*"))
        record.update({k: float(v) for k, v in (values or {}).items() if k.endswith(suffixes)})
        if self.rank != 0 or not record:
            return
        record = {"type": "collapse", "iteration": iteration, "epoch": self._epoch(iteration), **record}
        self.log(record, step=iteration)
        for warning in self.detector.update(record, where=f"iteration {iteration}"):
            self.log({"type": "collapse_warning", "iteration": iteration, "epoch": self._epoch(iteration), **warning})


def train_split_of(dataset: Any, cfg: DictConfig) -> str | None:
    """The split a training dataset reads: its ``split`` attribute, else ``data.split`` (default "train")."""
    if hasattr(dataset, "split"):
        return dataset.split
    return cfg.data.get("split", "train")


__all__ = ["OnlineEval", "OnlineEvalConfig", "OnlineKNN", "first_view", "knn_interval", "knn_slices", "rng_untouched",
           "student_indicators", "train_split_of"]
