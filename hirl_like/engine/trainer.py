"""The training loop (open_clip's shape): per-iteration schedules, autocast forward, one summed
loss, one backward, gradient clipping over every trainable parameter, optimizer step, EMA update,
logging; atomic checkpoints that resume exactly; exported backbones. The step itself is a
:class:`~hirl_like.engine.train_step.TrainStep` (also what ``tools/benchmark.py`` times); the loop
asks it for per-objective gradient norms on the last step of every log window.

Exact resume: the data order is a pure function of (seed, epoch), augmentations of (seed, epoch,
index), masks of (seed, iteration, rank), and the global torch RNG (drop path) is re-seeded from
(seed, iteration, rank) every step, so a run resumed from a checkpoint takes the same steps as
one that was never interrupted. Checkpoints also hold the unfinished epoch's bad-sample counts
(summed over ranks), so that epoch's ``data_epoch`` record and limit cover the whole epoch.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from hirl_like.config import save_config, to_dict
from hirl_like.data.bad_samples import BAD_KEY, BadSampleTracker
from hirl_like.data.build import build_train_dataset
from hirl_like.data.loader import TrainLoaders
from hirl_like.distributed import all_gather_no_grad, all_reduce_sum, barrier
from hirl_like.engine.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointWriter,
    capture_rng_state,
    load_checkpoint,
    remove_stale_temp_files,
    restore_rng_state,
    save_atomic,
)
from hirl_like.engine.dist_setup import DistInfo
from hirl_like.engine.epoch_context import EpochContext, RunInfo
from hirl_like.engine.logger import ProgressBar, RunningMeans, TrainLogger
from hirl_like.engine.online_eval import OnlineEval
from hirl_like.engine.recipe_scope import warn_if_off_tuned_data
from hirl_like.engine.train_step import TrainStep
from hirl_like.export import export_files, stale_exports, write_exports
from hirl_like.registry import PIPELINES
from hirl_like.schedules import Progress


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


# Keys that define the schedules of a run: resuming under other values would continue a run that
# was planned differently (lr, weight decay and EMA curves, data order).
SCHEDULE_KEYS = (
    "epochs", "batch_size", "seed", "optimizer.name", "optimizer.lr", "optimizer.min_lr", "optimizer.scale_lr",
    "optimizer.warmup_epochs", "optimizer.weight_decay", "optimizer.weight_decay_end",
)


def changed_schedule_keys(saved: Mapping[str, Any], cfg: DictConfig) -> list[str]:
    """``key: saved -> now`` for every schedule-defining key whose value differs from the checkpoint's config."""
    changes, current = [], to_dict(cfg)
    for key in SCHEDULE_KEYS:
        old, new = saved, current
        for part in key.split("."):
            old = old.get(part) if isinstance(old, Mapping) else None
            new = new.get(part) if isinstance(new, Mapping) else None
        if old != new:
            changes.append(f"{key}: {old!r} -> {new!r}")
    return changes


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory so far: CUDA max allocated on a GPU, else peak RSS (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Trainer:
    """Builds everything from a resolved config and runs :meth:`fit`."""

    def __init__(self, cfg: DictConfig, dist: DistInfo) -> None:
        self.cfg = cfg
        self.dist = dist
        self.device = dist.device
        self.output_dir = Path(cfg.output_dir)
        self.is_main = dist.rank == 0
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.output_dir / "config.yaml")

        torch.manual_seed(int(cfg.seed))  # model init is identical on every rank
        self.pipeline: nn.Module = PIPELINES.build(cfg.pipeline).to(self.device)
        needs_text = getattr(self.pipeline.backbones, "student_text", None) is not None
        self.dataset = build_train_dataset(cfg, needs_text)

        self.batch_size = int(cfg.batch_size)
        global_batch = self.batch_size * dist.world_size
        self.iters_per_epoch = len(self.dataset) // global_batch
        if self.iters_per_epoch == 0:
            raise ValueError(
                f"the dataset has {len(self.dataset)} samples, fewer than one global batch "
                f"({self.batch_size} x {dist.world_size} processes); lower batch_size."
            )
        self.bad_samples = BadSampleTracker.for_dataset(self.dataset)  # data.max_bad_fraction / max_bad_samples
        self.total_iterations = int(cfg.epochs) * self.iters_per_epoch
        if cfg.max_iterations is not None:
            self.total_iterations = min(self.total_iterations, int(cfg.max_iterations))
        self.schedule_iterations = int(cfg.epochs) * self.iters_per_epoch  # schedules span the full run
        if callable(check_run := getattr(self.pipeline, "check_run", None)):  # before any step or resume
            check_run(RunInfo(num_samples=len(self.dataset), epochs=int(cfg.epochs), iters_per_epoch=self.iters_per_epoch))

        # also applies compile / channels_last / tf32 (hirl_like/engine/train_step.py)
        self.stepper = TrainStep.from_config(
            cfg, self.pipeline, device=self.device, global_batch=global_batch, iters_per_epoch=self.iters_per_epoch,
            schedule_iterations=self.schedule_iterations, rank=dist.rank,
        )
        self.optimizer, self.opt_schedule, self.scaler = self.stepper.optimizer, self.stepper.schedule, self.stepper.scaler
        self.iteration = 0
        self.bad_steps_total = 0
        self.bad_steps_in_a_row = 0
        # checkpoint_async: rank 0 writes its saves from a CPU snapshot in a background thread
        self.checkpoint_writer = CheckpointWriter(asynchronous=bool(cfg.get("checkpoint_async", True)))
        self._resume_if_possible()

        if dist.world_size > 1:
            self.stepper.model = nn.parallel.DistributedDataParallel(
                self.pipeline,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(cfg.find_unused_parameters),
            )
        self.logger = TrainLogger(self.output_dir, enabled=self.is_main, tensorboard=bool(cfg.tensorboard))
        self.online_eval = OnlineEval.for_trainer(self)  # online_eval: k-NN every knn_every, collapse indicators
        if self.is_main:
            warn_if_off_tuned_data(cfg)
            warn_if_teachers_lag(self.pipeline, self.iters_per_epoch, self.schedule_iterations, self.total_iterations)

    # -- resume ------------------------------------------------------------------------------
    def _resume_if_possible(self) -> None:
        if self.is_main:
            remove_stale_temp_files(self.output_dir)
        path = self.output_dir / CHECKPOINT_NAME
        if not self.cfg.resume.enabled or not path.exists():
            return
        state = load_checkpoint(path)
        changes = changed_schedule_keys(state.get("config") or {}, self.cfg)
        if int(state.get("iters_per_epoch", self.iters_per_epoch)) != self.iters_per_epoch:
            changes.append(f"iterations per epoch: {state['iters_per_epoch']} -> {self.iters_per_epoch} (data or processes)")
        if changes and not self.cfg.resume.allow_changes:
            raise ValueError(
                f"{path} was trained under another schedule ({'; '.join(changes)}). Use another output_dir, "
                "resume.allow_changes=true to continue under the new values, or resume.enabled=false to start over."
            )
        try:
            self.pipeline.load_state_dict(state["model"], strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"{path} was written by a different model than this config builds "
                f"({str(err).splitlines()[0]} ...). Use another output_dir, or resume=false to start over."
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.bad_steps_total = int(state.get("bad_steps_total", 0))
        # The epoch's bad samples so far, summed over ranks when saved: rank 0 carries them on.
        self.bad_samples.load_state_dict(
            state.get("bad_samples"), epoch=self.iteration // self.iters_per_epoch, keep_counts=self.is_main
        )
        restore_rng_state(state["rng"])
        if self.is_main:
            print(f"resumed from {path} at iteration {self.iteration} (epoch {self.iteration / self.iters_per_epoch:.2f})")
            stale = stale_exports(self.pipeline, self.output_dir)
            if self.iteration >= self.total_iterations and stale:  # a finished run must have its exports
                write_exports(self.pipeline, self.output_dir)
                print(f"re-exported {', '.join(stale)} from the finished run's checkpoint")

    def _checkpoint_state(self, data_state: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.pipeline.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "epoch": self.iteration // self.iters_per_epoch,
            "iters_per_epoch": self.iters_per_epoch,
            "bad_steps_total": self.bad_steps_total,
            "bad_samples": data_state,  # the unfinished epoch's bad-sample counts, summed over ranks
            "rng": capture_rng_state(),
            "config": to_dict(self.cfg),
        }

    def save(self, numbered_epoch: int | None = None) -> None:
        """Write the checkpoint and exports (rank 0). Every rank must call it: the unfinished
        epoch's bad-sample counts are summed over ranks first.

        With ``checkpoint_async`` (the default) the state is copied to CPU here and written in
        the background: this first waits for the previous save's writes (raising their error,
        if any), and :meth:`wait_for_checkpoint` waits for this one's.
        """
        data_state = self.bad_samples.state_dict(reduce=self._reduce_sum)
        if not self.is_main:
            return
        state = self._checkpoint_state(data_state)
        # Exports first: a kill before the checkpoint's rename leaves the previous checkpoint,
        # so the rerun repeats the last steps and writes both again; never a newer checkpoint
        # beside older exports. The writer keeps this order, stops at the first failed file and
        # starts a save only once the previous one is on disk.
        files = list(export_files(self.pipeline, self.output_dir).values())
        if numbered_epoch is not None:
            files.append((state, self.output_dir / f"checkpoint{numbered_epoch:04d}.pth"))
        files.append((state, self.output_dir / CHECKPOINT_NAME))
        self.checkpoint_writer.submit(files, save=save_atomic, label=f"the save at iteration {self.iteration}")

    def wait_for_checkpoint(self) -> None:
        """Wait until the last save is on disk; raise its write error (CheckpointWriteError) if it failed."""
        self.checkpoint_writer.close()

    # -- one step ----------------------------------------------------------------------------
    def train_step(
        self, batch: dict[str, Any], progress: Progress, measure_grad_norms: bool = False
    ) -> dict[str, float] | None:
        """One optimisation step (:class:`TrainStep`); returns the logged scalars, or None when the
        step was skipped (counted, logged, and fatal after ``max_bad_steps`` in a row)."""
        result = self.stepper(batch, progress, measure_grad_norms=measure_grad_norms)
        if result.skipped is not None:
            self._skip_step(result.skipped, result.bad_terms)
            return None
        self.bad_steps_in_a_row = 0
        return result.values

    def _measures_grad_norms(self) -> bool:
        """Per-objective gradient norms on the last step of each log window (the step before a log line)."""
        done = self.iteration + 1
        return done % int(self.cfg.log_interval) == 0 or done == self.total_iterations

    def _skip_step(self, where: str, bad_terms: list[str]) -> None:
        self.bad_steps_total += 1
        self.bad_steps_in_a_row += 1
        message = (
            f"iteration {self.iteration}: non-finite {where} (terms: {', '.join(bad_terms)}); step skipped "
            f"({self.bad_steps_in_a_row} in a row, {self.bad_steps_total} in total)"
        )
        if self.is_main:
            print(message)
            self.logger.log({"type": "skipped_step", "iteration": self.iteration, "where": where, "terms": bad_terms})
        limit = int(self.cfg.max_bad_steps)
        if self.bad_steps_in_a_row >= limit:
            raise NonFiniteLossError(
                f"{limit} consecutive steps had a non-finite {where} (terms: {', '.join(bad_terms)}). "
                "The last good checkpoint is kept. Try precision=bf16 instead of fp16, AdamW "
                "optimizer.betas=[0.9,0.98] optimizer.eps=1e-6, or a lower optimizer.lr."
            )

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to the end; returns the summary. Never returns or raises while a checkpoint
        write is still in flight (a write error is raised, or printed when another error ends
        the run)."""
        try:
            return self._fit()
        except BaseException:
            self.checkpoint_writer.close(raise_errors=False)
            raise

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self.pipeline.train()
        means = RunningMeans()
        start_time = time.time()
        images_seen = 0
        progress_bar = None
        if self.is_main and cfg.progress_bar:
            progress_bar = ProgressBar(
                total=self.total_iterations, initial=self.iteration, log_interval=int(cfg.log_interval), desc="train"
            )
        last_values: dict[str, float] = {}
        # One loader for the run: map-style data keeps its workers across epochs (hirl_like/data/loader.py).
        loaders = TrainLoaders(
            self.dataset,
            batch_size=self.batch_size,
            num_workers=int(cfg.num_workers),
            seed=int(cfg.seed),
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            pin_memory=self.device.type == "cuda",
        )
        while self.iteration < self.total_iterations:
            epoch, start_in_epoch = divmod(self.iteration, self.iters_per_epoch)
            self._start_epoch(epoch)
            loader = loaders.for_epoch(epoch, start_in_epoch)
            for batch in loader:
                if self.iteration >= self.total_iterations:
                    break
                self.bad_samples.update(batch.pop(BAD_KEY, None))  # skipped samples; raises past the limit
                progress = Progress(self.iteration, self.iters_per_epoch, self.schedule_iterations, int(cfg.seed))
                tic = time.time()
                values = self.train_step(batch, progress, measure_grad_norms=self._measures_grad_norms())
                self.iteration += 1
                if values is not None:
                    images_seen += self.batch_size * self.dist.world_size
                    values["step_time"] = time.time() - tic
                    means.update(values)
                    last_values = values
                self.online_eval.after_step(self.iteration, batch, values)  # what is due; a collective for the k-NN
                if progress_bar is not None:
                    progress_bar.update(None if values is None else {
                        "loss": f"{values['loss']:.4f}", "epoch": f"{self.iteration / self.iters_per_epoch:.2f}",
                        **self.bad_samples.postfix(), **self.online_eval.postfix(),
                    })
                if self.iteration % int(cfg.log_interval) == 0 or self.iteration == self.total_iterations:
                    self._log_window(means, start_time, images_seen)
                if cfg.checkpoint_interval and self.iteration % int(cfg.checkpoint_interval) == 0:
                    self.save()
            epoch_done = self.iteration // self.iters_per_epoch
            complete = self.iteration % self.iters_per_epoch == 0
            if complete or self.iteration >= self.total_iterations:
                self._end_data_epoch(epoch, complete)
                numbered = epoch_done if cfg.save_interval and epoch_done % int(cfg.save_interval) == 0 else None
                self.save(numbered_epoch=numbered)
        loaders.close()
        if progress_bar is not None:
            progress_bar.close()
        self.wait_for_checkpoint()  # finished once the last checkpoint and exports are on disk
        summary = self._finish(last_values, time.time() - start_time)
        self.logger.close()
        return summary

    def _start_epoch(self, epoch: int) -> None:
        """The pipeline's per-epoch hook (HIRL's clustering), with the whole training set at hand."""
        hook = getattr(self.pipeline, "on_epoch_start", None)
        if not callable(hook):
            return
        context = EpochContext(
            self.cfg, self.device, self.dist.rank, self.dist.world_size,
            log=lambda record: self.logger.log({**record, "iteration": self.iteration, "epoch": epoch}),
            num_train_samples=len(self.dataset),
        )
        hook(epoch, context)
        self.pipeline.train()  # a hook may have put models in eval mode to embed images

    def _reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks on the communication device (a collective)."""
        return all_reduce_sum(t.to(self.device))

    def _end_data_epoch(self, epoch: int, complete: bool = True) -> None:
        """Log the epoch's bad-sample counts summed over ranks (a collective: all ranks call it), then
        stop if they exceed the limit. ``complete=False`` (the run stops mid-epoch) keeps the counts
        for the checkpoint, so a resumed run's record for this epoch covers all of it."""
        record = self.bad_samples.end_epoch(epoch, reduce=self._reduce_sum, reset=complete)
        self.logger.log({**record, "iteration": self.iteration, "epoch_complete": complete})
        if self.is_main and record["bad_samples"]:
            print(self.bad_samples.summary_line(record) + ("" if complete else " (so far: stopped mid-epoch)"))
        self.bad_samples.check_epoch(record)

    def _log_window(self, means: RunningMeans, start_time: float, images_seen: int) -> None:
        record = {
            "type": "train",
            "iteration": self.iteration,
            "epoch": round(self.iteration / self.iters_per_epoch, 4),
            **{k: round(v, 6) for k, v in means.means().items()},
            "images_per_sec": images_seen / max(time.time() - start_time, 1e-9),
        }
        self.logger.log(record, step=self.iteration)
        means.reset()

    def _finish(self, last_values: dict[str, float], wall: float) -> dict[str, Any]:
        """Check that every rank ended with the same weights (gradients were in sync) and summarise."""
        checksum = torch.stack([p.detach().double().sum() for p in self.pipeline.parameters()]).sum().reshape(1)
        checksums = all_gather_no_grad(checksum.to(self.device)).cpu().tolist()
        in_sync = all(math.isclose(c, checksums[0], rel_tol=0, abs_tol=1e-9) for c in checksums)
        summary = {
            "type": "summary",
            "iterations": self.iteration,
            "wall_time_s": round(wall, 2),
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),
            "world_size": self.dist.world_size,
            "skipped_steps": self.bad_steps_total,
            "params_in_sync": in_sync,
            "param_checksums": checksums,
            "final": {k: round(v, 6) for k, v in last_values.items()},
        }
        self.logger.log(summary)
        barrier()
        if not in_sync:
            raise RuntimeError(f"ranks ended with different weights: checksums {checksums}")
        return summary


TEACHER_INIT_WARN_SHARE = 0.01


def warn_if_teachers_lag(pipeline: nn.Module, iters_per_epoch: int, schedule_iterations: int, run_iterations: int) -> None:
    """One line on stderr when the EMA teachers would end the run still holding more than 1% of
    their random initialisation: their soft targets were then partly a random network's and the
    exported teacher trails its student (see ComposedPipeline.teacher_initial_share)."""
    share_of = getattr(pipeline, "teacher_initial_share", None)
    share = share_of(iters_per_epoch, schedule_iterations, run_iterations) if share_of is not None else None
    if share is None or share <= TEACHER_INIT_WARN_SHARE:
        return
    start = pipeline.ema_momentum_at_start(Progress(0, iters_per_epoch, schedule_iterations))
    print(
        f"warning: after {run_iterations} iterations the EMA teachers still hold {share:.0%} of their random "
        f"initialisation (EMA momentum {start:.4g} -> {pipeline.ema_momentum_end:g}); "
        "their targets are partly a random network's"
        + (" and the exported teacher will trail its student" if pipeline.export_vision() is getattr(
            pipeline.backbones, "teacher_vision", None) else "")
        + ". Give the teacher a half-life that fits the run, "
        "e.g. pipeline.ema_half_life=1%, or train longer.",
        file=sys.stderr, flush=True,
    )
