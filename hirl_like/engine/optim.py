"""Optimizer construction and its per-iteration lr / weight-decay schedule.

The ``optimizer`` config node: ``name`` (adamw | sgd | lars | lamb), ``lr`` (at a global batch
of 256, scaled by global batch / 256 when ``scale_lr``), ``min_lr``, ``warmup_epochs``,
``weight_decay`` -> ``weight_decay_end`` (cosine), and the optimizer's own arguments
(``betas``, ``eps``, ``momentum``, ``fused``). No weight decay on biases, norms and other 1-D or
0-D parameters (the logit scale and bias included), as iBOT's ``get_params_groups`` and open_clip.

AdamW's kernel (``optimizer.fused``, :func:`adamw_kernel`): ``auto`` (default) takes torch's fused
kernel where torch has one for the device (CUDA, CPU, MPS, XPU), else the multi-tensor ``foreach``
kernels, else the per-tensor loop; ``true`` = fused, ``foreach`` = multi-tensor kernels, ``false``
= torch's own choice without fusion (foreach on CUDA, the per-tensor loop on CPU). All give the
update of the per-tensor loop (tests/engine/test_optim.py). On CPU ``auto`` stays fused: there
torch's foreach ops loop over the tensors one op at a time, and on the Harmony quickstart's 158
parameter tensors an AdamW step took 15 ms fused against 102 ms foreach and 131 ms looped
(one thread, machine under load).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hirl_like.schedules import cosine, warmup_cosine

SCHEDULE_KEYS = ("name", "lr", "min_lr", "warmup_epochs", "weight_decay", "weight_decay_end", "scale_lr")
OPTIMIZER_ARGS = {
    "adamw": ("betas", "eps", "fused"),
    "sgd": ("momentum", "nesterov"),
    "lars": ("momentum", "eps", "trust_coeff"),
    "lamb": ("betas", "eps"),
}


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and every parameter with at most one dimension (norms, logit scale/bias)."""
    return param.ndim <= 1 or name.endswith(".bias")


def adamw_kernel(fused: object, device: torch.device) -> dict[str, bool | None]:
    """``torch.optim.AdamW``'s ``fused`` / ``foreach`` arguments for ``optimizer.fused`` on ``device``."""
    from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices, _get_fused_kernels_supported_devices

    if fused == "auto":
        if device.type in _get_fused_kernels_supported_devices():
            return {"fused": True, "foreach": None}
        return {"fused": None, "foreach": device.type in _get_foreach_kernels_supported_devices() or None}
    if fused == "foreach":
        return {"fused": None, "foreach": True}
    if isinstance(fused, bool):
        return {"fused": fused, "foreach": None}
    raise ValueError(f"optimizer.fused={fused!r}: choose auto, true, false or foreach.")


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Two groups of trainable parameters: with and without weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if is_no_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "apply_decay": True}, {"params": no_decay, "apply_decay": False, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


@dataclass
class OptimizerSchedule:
    """Per-iteration lr (warm-up + cosine) and weight decay (cosine) written into the param groups."""

    lr: float
    min_lr: float
    warmup_iterations: int
    weight_decay: float
    weight_decay_end: float
    total_iterations: int

    def values(self, iteration: int) -> tuple[float, float]:
        lr = warmup_cosine(self.lr, self.min_lr, self.warmup_iterations, self.total_iterations, iteration)
        wd = cosine(self.weight_decay, self.weight_decay_end, iteration, self.total_iterations)
        return lr, wd

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> tuple[float, float]:
        lr, wd = self.values(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = wd if group.get("apply_decay", True) else 0.0
        return lr, wd


def build_optimizer(
    cfg: Mapping[str, Any],
    model: nn.Module,
    global_batch_size: int,
    iters_per_epoch: int,
    total_iterations: int,
    device: torch.device,
) -> tuple[torch.optim.Optimizer, OptimizerSchedule]:
    cfg = dict(cfg)
    name = str(cfg.get("name", "adamw")).lower()
    if name not in OPTIMIZER_ARGS:
        hint = difflib.get_close_matches(name, list(OPTIMIZER_ARGS), n=1)
        raise ValueError(
            f"optimizer.name={name!r} is not known{'; did you mean ' + repr(hint[0]) + '?' if hint else '.'} "
            f"Choose one of {sorted(OPTIMIZER_ARGS)}."
        )
    allowed = set(SCHEDULE_KEYS) | set(OPTIMIZER_ARGS[name])
    for key in cfg:
        if key not in allowed:
            hint = difflib.get_close_matches(key, sorted(allowed), n=1)
            raise ValueError(
                f"optimizer.{key} is not an argument of {name}"
                f"{'; did you mean ' + repr(hint[0]) + '?' if hint else '.'} Accepted: {sorted(allowed)}."
            )
    base_lr = float(cfg.get("lr", 5e-4))
    lr = base_lr * global_batch_size / 256.0 if cfg.get("scale_lr", True) else base_lr
    schedule = OptimizerSchedule(
        lr=lr,
        min_lr=float(cfg.get("min_lr", 1e-6)),
        warmup_iterations=int(round(float(cfg.get("warmup_epochs", 0)) * iters_per_epoch)),
        weight_decay=float(cfg.get("weight_decay", 0.0)),
        weight_decay_end=float(cfg.get("weight_decay_end", cfg.get("weight_decay", 0.0))),
        total_iterations=total_iterations,
    )
    groups = param_groups(model)
    if name == "adamw":
        # "auto": fused on CUDA and CPU (module docstring: torch's CPU default, the per-tensor loop,
        # costs more the more parameter tensors a pipeline has: Harmony's heads and decoders).
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            groups, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))), eps=float(cfg.get("eps", 1e-8)),
            **adamw_kernel(cfg.get("fused", "auto"), device),
        )
    elif name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=float(cfg.get("momentum", 0.9)), nesterov=bool(cfg.get("nesterov", False)))
    else:  # lars / lamb from timm
        from timm.optim import create_optimizer_v2

        extra = {k: cfg[k] for k in OPTIMIZER_ARGS[name] if k in cfg}
        optimizer = create_optimizer_v2(groups, opt=name, lr=lr, weight_decay=schedule.weight_decay, **extra)
    schedule.apply(optimizer, 0)
    return optimizer, schedule
