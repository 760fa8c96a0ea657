"""AdamW's kernel choice: ``fused: auto`` picks torch's fused kernel on CPU too (the CPU default is
otherwise the per-tensor loop); an explicit ``fused`` is obeyed; both give the same update."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hirl_like.engine.optim import build_optimizer


def _step(fused: object) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    cfg = {"name": "adamw", "lr": 1e-2, "weight_decay": 0.05, "betas": [0.9, 0.98], "eps": 1e-6}
    if fused is not None:
        cfg["fused"] = fused
    optimizer, _ = build_optimizer(cfg, model, 256, 10, 100, torch.device("cpu"))
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("setting, expected", [(None, True), ("auto", True), (False, False), (True, True)])
def test_adamw_kernel_choice_on_cpu(setting, expected):
    optimizer, _ = _step(setting)
    assert optimizer.defaults["fused"] is expected


def test_fused_and_loop_kernels_give_the_same_update():
    _, fused = _step(True)
    _, loop = _step(False)
    for a, b in zip(fused, loop):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
