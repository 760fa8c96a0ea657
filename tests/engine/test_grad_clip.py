"""Gradient clipping: per tensor (DINO/iBOT clip_gradients) against a naive loop, global against
torch's clip_grad_norm_, and the grad_clip_mode config key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hirl_like.config import load_config
from hirl_like.engine.dist_setup import init_distributed
from hirl_like.engine.grad_clip import clip_gradients_
from hirl_like.engine.train_step import TrainStep
from hirl_like.engine.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
CLIP = ROOT / "configs/quickstart/clip_vit_tiny_digits.yaml"


def params_with_grads(seed: int = 0) -> list[torch.nn.Parameter]:
    """Tensors of different sizes whose gradient norms straddle the bound (1.0)."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape, size in (((4, 3), 0.05), ((7,), 3.0), ((2, 2, 2), 0.4), ((5,), 10.0), ((3, 3), 1.0)):
        p = torch.nn.Parameter(torch.zeros(shape))
        p.grad = torch.randn(shape, generator=g) * size
        params.append(p)
    params.append(torch.nn.Parameter(torch.zeros(2)))  # no gradient: skipped
    return params


def naive_dino_clip_gradients(params: list[torch.nn.Parameter], clip: float) -> list[float]:
    """DINO's utils.clip_gradients, verbatim in spirit: one tensor at a time."""
    norms = []
    for p in params:
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def test_per_tensor_matches_the_naive_loop():
    ours, reference = params_with_grads(), params_with_grads()
    total = clip_gradients_(ours, 1.0, "per_tensor")
    norms = naive_dino_clip_gradients(reference, 1.0)
    for a, b in zip(ours, reference):
        if b.grad is None:
            assert a.grad is None
            continue
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
        assert a.grad.norm() <= 1.0 + 1e-5
    assert total.item() == pytest.approx(sum(n * n for n in norms) ** 0.5, rel=1e-6)
    assert max(float(p.grad.norm()) for p in ours if p.grad is not None) == pytest.approx(1.0, abs=1e-4)


def test_global_matches_clip_grad_norm_and_off_only_measures():
    ours, reference = params_with_grads(), params_with_grads()
    total = clip_gradients_(ours, 1.0, "global")
    expected = torch.nn.utils.clip_grad_norm_([p for p in reference if p.grad is not None], 1.0)
    assert torch.equal(total, expected)
    for a, b in zip(ours, reference):
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)
    untouched, original = params_with_grads(), params_with_grads()
    for mode in ("global", "per_tensor"):
        norm = clip_gradients_(untouched, None, mode)
        assert norm.item() == pytest.approx(expected.item(), rel=1e-6)
        assert all(a.grad is None or torch.equal(a.grad, b.grad) for a, b in zip(untouched, original))


def test_unknown_mode_is_rejected_with_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"grad_clip_mode='per_param'.*global, per_tensor"):
        clip_gradients_(params_with_grads(), 1.0, "per_param")
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="grad_clip_mode="):
        TrainStep(model, opt, None, device=torch.device("cpu"), grad_clip=1.0, grad_clip_mode="Global")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["global", "per_tensor"])
def test_trainer_reads_grad_clip_mode_from_the_config(tmp_path, mode):
    fast = ["batch_size=32", "num_workers=0", "progress_bar=false", "tensorboard=false", "pipeline.vision.depth=1",
            "pipeline.text.layers=1"]
    cfg = load_config(CLIP, [f"output_dir={tmp_path}", *fast, f"+grad_clip_mode={mode}"])
    assert Trainer(cfg, init_distributed(device="cpu")).stepper.grad_clip_mode == mode


def test_an_unknown_grad_clip_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"grad_clip_mode.*per_layer.*global.*per_tensor"):  # by the config layer
        load_config(CLIP, [f"output_dir={tmp_path}", "grad_clip_mode=per_layer"])
    cfg = load_config(CLIP, [f"output_dir={tmp_path}", "batch_size=32", "num_workers=0"])
    cfg.grad_clip_mode = "per_layer"  # a config built in code, past the loader: the trainer refuses too
    with pytest.raises(ValueError, match=r"grad_clip_mode='per_layer'.*global, per_tensor"):
        Trainer(cfg, init_distributed(device="cpu"))
