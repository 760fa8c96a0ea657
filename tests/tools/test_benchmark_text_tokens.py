"""tools/benchmark.py counts the text tokens of a step (real vs computed) and measures captions at
the batch length against captions padded to the context (issue 18)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tools.test_benchmark_step import OVERRIDES, load_benchmark

ROOT = Path(__file__).resolve().parents[2]
HARMONY = "configs/quickstart/harmony_vit_tiny_digits.yaml"
CLIP = "configs/quickstart/clip_vit_tiny_digits.yaml"


def test_the_benchmark_batch_is_cut_and_pad_text_restores_the_context():
    bench = load_benchmark()
    step, batch, progress, _, cfg = bench.prepare_step(str(ROOT / HARMONY), OVERRIDES, 8)
    assert batch["text"].shape == (8, 16)  # the loader's collate cut the digits captions (context 32)
    padded = bench.pad_text(batch, 32, "context")
    assert padded["text"].shape == (8, 32) and torch.equal(padded["text"][:, :16], batch["text"])
    assert bench.pad_text(batch, 32, "batch") is batch
    with pytest.raises(ValueError, match="padding"):
        bench.pad_text(batch, 32, "full")

    # Harmony: student (CLIP), EMA teacher (soft targets, text distillation), masked student (MLM)
    cut = bench.count_text_tokens(step.pipeline, lambda: step(batch, progress(0)))
    full = bench.count_text_tokens(step.pipeline, lambda: step(padded, progress(1)))
    assert cut["text_passes"] == full["text_passes"] == 3
    assert cut["text_real_tokens"] == full["text_real_tokens"] < cut["text_computed_tokens"] == 3 * 8 * 16
    assert full["text_computed_tokens"] == 3 * 8 * 32


@pytest.mark.slow
def test_text_padding_both_prints_before_and_after(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "tools/benchmark.py", "-c", CLIP, "--batch-sizes", "2", "--steps", "1", "--warmup", "1",
           "--data-batches", "0", "--text-padding", "both", "--output", str(out), "pipeline.vision.depth=1",
           "pipeline.text.layers=1", "num_workers=0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "text at the batch length" in proc.stdout and "time after/before" in proc.stdout
    data = json.loads(out.read_text())
    after, before = data["results"][CLIP][0], data["results_padded_to_context"][CLIP][0]
    length = after["text_length"]
    assert before["text_length"] == 32 > length and length % 8 == 0
    assert before["text_real_tokens"] == after["text_real_tokens"] <= after["text_computed_tokens"] == 2 * length
    assert before["text_computed_tokens"] == 2 * 32
