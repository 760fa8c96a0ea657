"""Speed options of the training step (issue 18 items 3 and 6), on CPU.

- ``compile: true`` compiles every Transformer / ResNet block (:func:`compile_blocks`), keeps the
  state-dict keys, and trains a tiny CLIP and a tiny Harmony config to the same losses as eager
  mode over 3 steps (slow: inductor compiles for ~1-2.5 minutes on a busy 2-core machine);
- ``channels_last: true`` converts the convolution weights and image batches and gives a ResNet
  the same step as the default layout;
- precision: bf16 autocast and fp16 with a GradScaler are built from the config, and ``tf32``
  sets the CUDA matmul / cuDNN flags.
"""

from __future__ import annotations

import pytest
import torch

from hirl_like.engine import train_step as train_step_module
from hirl_like.engine.train_step import compile_blocks, configure_cuda_math, to_channels_last
from tests.tools.test_benchmark_step import OVERRIDES as HARMONY_TINY
from tests.tools.test_benchmark_step import load_benchmark

HARMONY = "configs/quickstart/harmony_vit_tiny_digits.yaml"
CLIP = "configs/quickstart/clip_vit_tiny_digits.yaml"
SIMSIAM = "configs/quickstart/simsiam_resnet18_digits.yaml"
CLIP_TINY = ["num_workers=0", "pipeline.vision.depth=2", "pipeline.text.layers=1"]


def run_steps(config: str, overrides: list[str], steps: int = 3, batch: int = 8):
    step, data, progress, _, _ = load_benchmark().prepare_step(config, overrides, batch)
    values = []
    for i in range(steps):
        result = step(data, progress(i))
        assert result.skipped is None
        values.append(result.values)
    return step, values


def test_compile_blocks_finds_every_block_and_keeps_the_state_dict():
    step, _ = run_steps(HARMONY, [*HARMONY_TINY, "pipeline.vision.depth=2"], steps=0)
    pipeline = step.pipeline
    keys = list(pipeline.state_dict())
    # compile: false by default, so nothing is compiled until asked (compilation itself is lazy)
    assert not any(getattr(m, "_compiled_call_impl", None) for m in pipeline.modules())
    n = compile_blocks(pipeline)
    # student + teacher ViT (2 each), student + teacher text (1 each), MAE and MLM decoders (1 each)
    assert n == 2 + 2 + 1 + 1 + 1 + 1
    compiled = [m for m in pipeline.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert len(compiled) == n and list(pipeline.state_dict()) == keys
    import torch._inductor.config as inductor_config

    assert inductor_config.fallback_random  # drop path draws what eager mode draws


@pytest.mark.slow
@pytest.mark.parametrize("config, overrides", [(CLIP, CLIP_TINY), (HARMONY, [*HARMONY_TINY, "pipeline.vision.depth=2"])],
                         ids=["clip", "harmony"])
def test_compiled_steps_give_the_eager_losses(config, overrides):
    """Every logged term (each objective's losses, the total) of 3 steps; Harmony with drop path 0.1."""
    _, eager = run_steps(config, [*overrides, "compile=false"])
    step, compiled = run_steps(config, [*overrides, "compile=true"])
    assert any(getattr(m, "_compiled_call_impl", None) is not None for m in step.pipeline.modules())
    for i, (a, b) in enumerate(zip(eager, compiled)):
        terms = [k for k in a if k not in ("lr", "weight_decay") and not k.startswith("grad_norm")]
        assert len(terms) > 1 and a.keys() == b.keys()
        for key in terms:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), f"step {i}: {key}"


def test_channels_last_converts_weights_and_batches_and_gives_the_same_step():
    tiny = ["num_workers=0", "grad_clip=null"]
    step, default = run_steps(SIMSIAM, tiny, steps=2)
    nhwc, converted = run_steps(SIMSIAM, [*tiny, "channels_last=true"], steps=2)
    conv = nhwc.pipeline.backbones.student_vision.model.conv1.weight
    assert nhwc.channels_last and conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for a, b in zip(default, converted):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
    for (name, p), q in zip(step.pipeline.named_parameters(), nhwc.pipeline.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    batch = to_channels_last({"global_crops": [torch.zeros(2, 3, 4, 4)], "text": torch.zeros(2, 8, dtype=torch.long)})
    assert batch["global_crops"][0].is_contiguous(memory_format=torch.channels_last)
    assert batch["text"].is_contiguous()


@pytest.mark.parametrize("precision, dtype, scaler", [("fp32", None, False), ("bf16", torch.bfloat16, False),
                                                      ("fp16", torch.float16, True)])
def test_precision_from_the_config(precision, dtype, scaler):
    step, values = run_steps(CLIP, [*CLIP_TINY, f"precision={precision}"], steps=1 if precision != "fp16" else 0)
    assert step.autocast_dtype is dtype and step.scaler.is_enabled() is scaler
    with step.autocast():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == (dtype or torch.float32)


def test_tf32_flags(monkeypatch):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        configure_cuda_math(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        configure_cuda_math(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    # from_config sets them from the config's tf32 on CUDA only (the optimizer is stubbed: no GPU here)
    from hirl_like.config import load_config
    from hirl_like.registry import PIPELINES

    calls = []
    monkeypatch.setattr(train_step_module, "configure_cuda_math", calls.append)
    monkeypatch.setattr(train_step_module, "build_optimizer", lambda *a: (torch.optim.SGD([torch.zeros(1)], lr=1), None))
    for tf32, device in (("false", "cuda"), ("true", "cuda"), ("false", "cpu")):
        cfg = load_config(CLIP, [*CLIP_TINY, f"tf32={tf32}"])
        pipeline = PIPELINES.build(cfg.pipeline)
        train_step_module.TrainStep.from_config(cfg, pipeline, device=torch.device(device), global_batch=8,
                                                iters_per_epoch=1, schedule_iterations=1)
    assert calls == [False, True]
