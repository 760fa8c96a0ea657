"""``optimizer.name: lars`` (timm's LARS, used by the BYOL and HARL recipes) against a naive
per-parameter loop of the LARS update (You et al. 2017) with BYOL's exclusion: biases and norms
get neither weight decay nor the trust ratio, only momentum SGD."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hirl_like.engine.optim import build_optimizer

LR, WD, MOMENTUM, ETA = 0.4, 1e-2, 0.9, 1e-3


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


def loss_of(net: nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)
    return ((net(x) - y) ** 2).mean()


def naive_lars(net: nn.Module, steps: int, lrs: list[float]) -> None:
    """For a weight w with gradient g (decay group): u = eta |w| / (|g| + wd |w|) * (g + wd w);
    biases / 1-D parameters: u = g. Then buf = m buf + u (buf = u at the first step), w -= lr buf."""
    buffers: dict[str, torch.Tensor] = {}
    for step in range(steps):
        net.zero_grad()
        loss_of(net, step).backward()
        with torch.no_grad():
            for name, w in net.named_parameters():
                g = w.grad
                if w.ndim > 1 and not name.endswith(".bias"):
                    w_norm = sum(float(v) ** 2 for v in w.flatten()) ** 0.5
                    g_norm = sum(float(v) ** 2 for v in g.flatten()) ** 0.5
                    trust = ETA * w_norm / (g_norm + WD * w_norm + 1e-8) if w_norm > 0 and g_norm > 0 else 1.0
                    update = (g + WD * w) * trust
                else:
                    update = g.clone()
                buffers[name] = update if name not in buffers else MOMENTUM * buffers[name] + update
                w -= lrs[step] * buffers[name]


def test_lars_matches_the_naive_update_with_bias_and_norm_exclusion():
    steps, cfg = 4, {"name": "lars", "lr": LR, "scale_lr": False, "min_lr": 0.01, "warmup_epochs": 0,
                     "weight_decay": WD, "weight_decay_end": WD, "momentum": MOMENTUM, "trust_coeff": ETA}
    net = model()
    optimizer, schedule = build_optimizer(cfg, net, global_batch_size=256, iters_per_epoch=2, total_iterations=steps,
                                          device=torch.device("cpu"))
    assert type(optimizer).__name__ == "Lars"
    lrs = []
    for step in range(steps):
        lrs.append(schedule.apply(optimizer, step)[0])
        optimizer.zero_grad()
        loss_of(net, step).backward()
        optimizer.step()
    reference = model()
    naive_lars(reference, steps, lrs)
    for (name, a), (_, b) in zip(net.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert lrs[0] == pytest.approx(LR) and lrs[-1] < LR  # cosine from lr towards min_lr


def test_lars_lr_scales_linearly_with_the_global_batch():
    cfg = {"name": "lars", "lr": 0.2, "warmup_epochs": 0, "weight_decay": 1.5e-6, "momentum": 0.9}
    optimizer, _ = build_optimizer(cfg, model(), global_batch_size=4096, iters_per_epoch=1, total_iterations=10,
                                   device=torch.device("cpu"))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3.2)  # BYOL: 0.2 x 4096 / 256
