"""tools/benchmark.py times the trainer's own step: one step through the benchmark's path and one
through Trainer.train_step, same seed, batch and progress, end with identical parameters."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from hirl_like.config import load_config
from hirl_like.engine.dist_setup import init_distributed
from hirl_like.engine.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
HARMONY = "configs/quickstart/harmony_vit_tiny_digits.yaml"
BATCH = 8
# A constant lr and weight decay (the benchmark's schedule length is its own); a clipping bound the
# gradients exceed, so that clipping decides the result.
OVERRIDES = [
    "num_workers=0", "progress_bar=false", "tensorboard=false", "pipeline.vision.depth=1", "pipeline.text.layers=1",
    "pipeline.ibot.out_dim=64", "pipeline.ibot.patch_out_dim=64", "pipeline.text_distill.out_dim=64",
    "pipeline.mae.decoder_depth=1", "pipeline.mlm.decoder_depth=1", "optimizer.scale_lr=false", "optimizer.lr=1e-3",
    "optimizer.min_lr=1e-3", "optimizer.warmup_epochs=0", "optimizer.weight_decay=0.04", "optimizer.weight_decay_end=0.04",
    "grad_clip=0.05",
]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_tool", ROOT / "tools/benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def benchmark_then_trainer(tmp_path: Path, mode: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    overrides = [*OVERRIDES, f"+grad_clip_mode={mode}"]
    step, batch, progress, _, _ = load_benchmark().prepare_step(str(ROOT / HARMONY), overrides, BATCH)
    step(batch, progress(0))
    bench = {k: v.clone() for k, v in step.pipeline.state_dict().items()}

    cfg = load_config(ROOT / HARMONY, [*overrides, f"batch_size={BATCH}", f"output_dir={tmp_path / mode}"])
    trainer = Trainer(cfg, init_distributed(device="cpu"))
    trainer.pipeline.train()
    assert trainer.train_step(batch, progress(0)) is not None
    return bench, {k: v.clone() for k, v in trainer.pipeline.state_dict().items()}


def test_one_benchmark_step_equals_one_trainer_step(tmp_path):
    """For both clipping modes; the modes give different weights, so clipping decides the result."""
    benched = {}
    for mode in ("global", "per_tensor"):
        bench, trained = benchmark_then_trainer(tmp_path, mode)
        assert bench.keys() == trained.keys()
        for key in bench:
            assert torch.equal(bench[key], trained[key]), f"{mode}: {key} differs between the benchmark and the trainer"
        benched[mode] = bench
    vit = "backbones.student_vision.blocks.0.attn.qkv.weight"
    assert not torch.equal(benched["global"][vit], benched["per_tensor"][vit])
