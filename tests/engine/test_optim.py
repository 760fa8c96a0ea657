"""AdamW's kernel choice (``optimizer.fused``): ``auto`` picks torch's fused kernel where torch has
one for the device (CUDA and CPU: on CPU torch's default is otherwise the per-tensor loop, and its
foreach ops loop too), foreach kernels elsewhere; an explicit value is obeyed; every kernel gives
the update of the plain per-tensor loop, over steps with weight-decay groups and a schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hirl_like.config import ConfigError, load_config
from hirl_like.engine.optim import adamw_kernel, build_optimizer, param_groups

KERNELS = {"fused": True, "foreach": "foreach", "torch default": False}
CFG = {"name": "adamw", "lr": 1e-2, "weight_decay": 0.05, "weight_decay_end": 0.2, "warmup_epochs": 1,
       "betas": [0.9, 0.98], "eps": 1e-6}


def _step(fused: object, steps: int = 3) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    cfg = dict(CFG)
    if fused is not None:
        cfg["fused"] = fused
    optimizer, schedule = build_optimizer(cfg, model, 256, 2, 10, torch.device("cpu"))
    for i in range(steps):
        schedule.apply(optimizer, i)  # lr warm-up and the weight-decay ramp, as the trainer does
        model(torch.randn(5, 4)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer, [p.detach().clone() for p in model.parameters()]


def _plain_loop(steps: int = 3) -> list[torch.Tensor]:
    """The same run with torch's single-tensor implementation (neither fused nor foreach)."""
    _, schedule = build_optimizer(CFG, nn.Linear(1, 1), 256, 2, 10, torch.device("cpu"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    loop = torch.optim.AdamW(param_groups(model), lr=1e-2, betas=(0.9, 0.98), eps=1e-6, foreach=False, fused=False)
    for i in range(steps):
        schedule.apply(loop, i)
        model(torch.randn(5, 4)).pow(2).mean().backward()
        loop.step()
        loop.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("setting, fused, foreach", [(None, True, None), ("auto", True, None), (False, False, None),
                                                     (True, True, None), ("foreach", None, True)])
def test_adamw_kernel_choice_on_cpu(setting, fused, foreach):
    optimizer, _ = _step(setting)
    assert optimizer.defaults["fused"] is fused and optimizer.defaults["foreach"] is foreach


def test_auto_is_fused_on_cuda_and_cpu_and_foreach_where_no_fused_kernel_exists():
    assert adamw_kernel("auto", torch.device("cuda", 0)) == {"fused": True, "foreach": None}
    assert adamw_kernel("auto", torch.device("cpu")) == {"fused": True, "foreach": None}
    assert adamw_kernel("auto", torch.device("meta")) == {"fused": None, "foreach": None}  # neither: torch decides
    assert adamw_kernel("foreach", torch.device("cuda")) == {"fused": None, "foreach": True}
    assert adamw_kernel(False, torch.device("cuda")) == {"fused": False, "foreach": None}
    with pytest.raises(ValueError, match="auto, true, false or foreach"):
        adamw_kernel("fast", torch.device("cpu"))


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_gives_the_plain_loop_update(kernel):
    _, got = _step(KERNELS[kernel])
    for a, b in zip(got, _plain_loop()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_the_config_key_accepts_foreach_and_refuses_others(tmp_path):
    cfg = load_config("configs/quickstart/clip_vit_tiny_digits.yaml", ["+optimizer.fused=foreach"])
    assert cfg.optimizer.fused == "foreach"
    with pytest.raises(ConfigError):
        load_config("configs/quickstart/clip_vit_tiny_digits.yaml", ["+optimizer.fused=fast"])
