"""One optimisation step, the same object for the trainer's loop and for ``tools/benchmark.py``.

Order (open_clip's loop; DINO/iBOT's clip-then-cancel-last-layer): per-iteration lr and weight
decay, pipeline schedules, drop path re-seeded from (seed, iteration, rank), autocast forward,
non-finite loss guard, optional per-objective gradient norms, scaled backward, unscale, clipping
(``grad_clip`` / ``grad_clip_mode``) over every parameter with a gradient, non-finite gradient
guard, the pipeline's pre-step hooks (frozen last layers), optimizer and scaler step, the
pipeline's post-step hooks (EMA teachers, logit-scale clamp).

What the benchmark times is therefore what training runs: same clipping, autocast, optimizer.

Speed options, applied by :meth:`TrainStep.from_config` (so the trainer and the benchmark share them):
``compile`` (:func:`compile_blocks`: ``torch.compile`` of every Transformer / residual block,
same losses as eager), ``channels_last`` (convolution weights and 4-D image batches in NHWC, for
ResNets on GPUs), ``tf32`` (CUDA: TF32 tensor cores for fp32 matmuls and convolutions; on by default).
Precision: ``bf16`` autocast, ``fp16`` autocast with a GradScaler, or ``fp32``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hirl_like.distributed import all_reduce_sum
from hirl_like.engine.grad_clip import check_grad_clip_mode, clip_gradients_
from hirl_like.engine.grad_norms import objective_grad_norms
from hirl_like.engine.optim import OptimizerSchedule, build_optimizer
from hirl_like.pipelines.step_cache import step_seed
from hirl_like.schedules import Progress

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def compiled_block_types() -> tuple[type, ...]:
    """The repeated blocks :func:`compile_blocks` compiles: timm's ViT ``Block`` (vision towers, the
    text transformer, the MAE and MLM decoders) and timm's ResNet ``BasicBlock`` / ``Bottleneck``."""
    from timm.models.resnet import BasicBlock, Bottleneck
    from timm.models.vision_transformer import Block

    return (Block, BasicBlock, Bottleneck)


def compile_blocks(pipeline: nn.Module) -> int:
    """``torch.compile`` every repeated block of ``pipeline`` in place; returns how many.

    Blocks, not towers: the pipelines call towers through methods other than ``forward``
    (``forward_tokens``, ``forward_features``), which ``Module.compile`` would not reach, and a
    block's graph is the same for every block of a tower, so it compiles once per input shape.
    ``Module.compile`` keeps parameters and state-dict keys, so checkpoints and exports load with
    or without compilation. Random ops (drop path) draw from torch's generator as in eager mode
    (inductor's ``fallback_random``), so a compiled run takes the steps an eager run takes, up to
    float rounding (tests/engine/test_compile.py), and resumes exactly.
    """
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    types = compiled_block_types()
    blocks = [m for m in pipeline.modules() if isinstance(m, types)]
    # A tower built from other blocks (open_clip / Hugging Face builders): its forward, whole.
    backbones = getattr(pipeline, "backbones", None)
    for name in ("student_vision", "teacher_vision", "student_text", "teacher_text"):
        tower = getattr(backbones, name, None)
        if isinstance(tower, nn.Module) and not any(isinstance(m, types) for m in tower.modules()):
            blocks.append(tower)
    for block in blocks:
        block.compile()
    return len(blocks)


def configure_cuda_math(tf32: bool) -> None:
    """TF32 tensor cores for fp32 matmuls (cuBLAS) and convolutions (cuDNN), or full fp32 (CUDA only;
    bf16/fp16 autocast regions are unaffected)."""
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)


def to_channels_last(batch: Any) -> Any:
    """4-D floating tensors (image batches, also inside lists and dicts) in channels-last layout."""
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=torch.channels_last) if batch.ndim == 4 and batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {k: to_channels_last(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_channels_last(v) for v in batch)
    return batch


def move_to(batch: Any, device: torch.device) -> Any:
    """Tensors (also inside lists and dicts) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


@dataclass
class StepResult:
    """What one step did.

    values: logged scalars (every term, schedules, lr, weight_decay, grad_norm, and
        ``grad_norm/<objective>`` when measured); empty when the step was skipped.
    skipped: None, or "loss" / "gradient" when that was non-finite on some rank (every rank skips).
    bad_terms: the non-finite terms of a skipped step (["loss"] when no single term is to blame).
    """

    values: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None
    bad_terms: list[str] = field(default_factory=list)


class TrainStep:
    """Args:
    pipeline: the (unwrapped) pipeline: ``update_schedules``, ``forward(batch) -> {"loss", ...}``,
        ``before_optimizer_step``, ``after_optimizer_step``; optionally ``take_weighted_terms`` and
        ``grad_norm_parameters`` for per-objective gradient norms.
    optimizer, schedule: from :func:`~hirl_like.engine.optim.build_optimizer`.
    device: where the batch goes. precision: fp32 | bf16 | fp16 (fp16 uses a GradScaler).
    grad_clip: the clipping bound, None or 0 = off. grad_clip_mode: global | per_tensor.
    rank: this process's rank (drop-path seed). channels_last: give the forward 4-D image
        batches in channels-last layout (the pipeline's weights are converted by ``from_config``).

    ``model`` is what the forward calls: the pipeline, or its DDP wrapper once the trainer sets it.
    """

    def __init__(
        self,
        pipeline: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: OptimizerSchedule,
        *,
        device: torch.device,
        precision: str = "fp32",
        grad_clip: float | None = None,
        grad_clip_mode: str = "global",
        rank: int = 0,
        channels_last: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; choose one of {sorted(PRECISIONS)}.")
        if grad_clip is not None and grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (or null for no clipping), got {grad_clip}.")
        self.pipeline = pipeline
        self.model: nn.Module = pipeline
        self.optimizer = optimizer
        self.schedule = schedule
        self.device = device
        self.autocast_dtype = PRECISIONS[precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.grad_clip = float(grad_clip) if grad_clip else None
        self.grad_clip_mode = check_grad_clip_mode(grad_clip_mode)
        self.rank = rank
        self.channels_last = bool(channels_last)

    @classmethod
    def from_config(
        cls,
        cfg: Mapping[str, Any],
        pipeline: nn.Module,
        *,
        device: torch.device,
        global_batch: int,
        iters_per_epoch: int,
        schedule_iterations: int,
        rank: int = 0,
    ) -> "TrainStep":
        """The step a config describes: ``optimizer`` node, ``precision``, ``grad_clip``, ``grad_clip_mode``,
        and the speed options ``compile``, ``channels_last`` and ``tf32`` (module docstring), which
        change ``pipeline`` in place (before the optimizer takes its parameters)."""
        if device.type == "cuda":
            configure_cuda_math(bool(cfg.get("tf32", True)))
        channels_last = bool(cfg.get("channels_last", False))
        if channels_last:
            pipeline.to(memory_format=torch.channels_last)  # 4-D weights only; the same Parameter objects
        if cfg.get("compile", False):
            compile_blocks(pipeline)
        optimizer, schedule = build_optimizer(
            cfg["optimizer"], pipeline, global_batch, iters_per_epoch, schedule_iterations, device
        )
        clip = cfg["grad_clip"]
        return cls(
            pipeline, optimizer, schedule, device=device, precision=str(cfg["precision"]),
            grad_clip=None if clip is None else float(clip), grad_clip_mode=cfg.get("grad_clip_mode", "global"), rank=rank,
            channels_last=channels_last,
        )

    def autocast(self):
        """The forward's autocast context (none in fp32)."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def __call__(self, batch: dict[str, Any], progress: Progress, *, measure_grad_norms: bool = False) -> StepResult:
        """One step on ``batch`` at ``progress``; ``measure_grad_norms`` adds ``grad_norm/<objective>``.

        Every rank must make the same call (the non-finite guards and the norms are collective).
        """
        lr, wd = self.schedule.apply(self.optimizer, progress.iteration)
        schedules = self.pipeline.update_schedules(progress)
        torch.manual_seed(step_seed(progress.seed, progress.iteration, self.rank))  # drop path
        batch = move_to(batch, self.device)
        if self.channels_last:
            batch = to_channels_last(batch)
        with self.autocast():
            out = self.model(batch)
        terms = self.pipeline.take_weighted_terms() if hasattr(self.pipeline, "take_weighted_terms") else {}
        loss = out["loss"]
        if not self._all_finite(loss):
            return self._skip(out, "loss")
        norms = self._objective_grad_norms(terms) if measure_grad_norms else {}
        del terms  # the step's backward frees the graph; nothing else may hold it
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.pipeline.parameters() if p.grad is not None]
        grad_norm = clip_gradients_(params, self.grad_clip, self.grad_clip_mode)
        # With fp16 the scaler skips steps with inf/NaN gradients itself (and lowers the scale).
        if not self.scaler.is_enabled() and not self._all_finite(grad_norm):
            return self._skip(out, "gradient")
        self.pipeline.before_optimizer_step()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.pipeline.after_optimizer_step()
        values = {k: float(v.detach()) for k, v in out.items()}
        values.update(schedules)
        values.update({"lr": lr, "weight_decay": wd, "grad_norm": float(grad_norm)})
        values.update({f"grad_norm/{name}": norm for name, norm in norms.items()})
        return StepResult(values)

    def _objective_grad_norms(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        if not terms or not hasattr(self.pipeline, "grad_norm_parameters"):
            return {}
        scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
        return objective_grad_norms(terms, self.pipeline.grad_norm_parameters(), scale)

    def _all_finite(self, value: torch.Tensor) -> bool:
        bad = torch.tensor(0.0 if torch.isfinite(value.detach()).all() else 1.0, device=self.device)
        return bool(all_reduce_sum(bad).item() == 0)  # every rank skips together

    def _skip(self, out: dict[str, torch.Tensor], where: str) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        bad = [k for k, v in out.items() if k != "loss" and not torch.isfinite(v.detach()).all()] or ["loss"]
        return StepResult(skipped=where, bad_terms=bad)
