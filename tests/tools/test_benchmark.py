"""tools/benchmark.py measures and prints the Table 6 layout (figures themselves are not asserted:
speed targets live in the benchmark, not in timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_benchmark_vs_prints_ratios_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable, "tools/benchmark.py", "-c", "configs/benchmark/harmony_vit_tiny_digits_multicrop.yaml",
        "--vs", "configs/quickstart/clip_vit_tiny_digits.yaml", "--batch-sizes", "2", "--steps", "2", "--warmup", "1",
        "--data-batches", "2", "--output", str(out), "pipeline.vision.depth=1", "pipeline.text.layers=1", "num_workers=0",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Table 6 layout" in proc.stdout and "share of each objective" in proc.stdout
    data = json.loads(out.read_text())
    harmony = data["results"]["configs/benchmark/harmony_vit_tiny_digits_multicrop.yaml"][0]
    assert harmony["step_time_median_s"] > 0 and harmony["peak_memory_mb"] > 0 and harmony["loader_images_per_s"] > 0
    clip = data["results"]["configs/quickstart/clip_vit_tiny_digits.yaml"][0]
    # Harmony runs CLIP's image and text passes plus iBOT, MAE, MLM and text distillation on top.
    assert harmony["flops_per_step"] > 2 * clip["flops_per_step"] > 0
    assert harmony["matmul_peak_tflops"] > 0 and 0 < harmony["mfu"] == harmony["achieved_tflops"] / harmony["matmul_peak_tflops"]
    assert "| batch per process | memory | time | FLOPs |" in proc.stdout and "MFU" in proc.stdout
    assert set(data["objective_shares"]) == {"clip", "ibot", "mae", "mlm", "text_distill"}
    assert abs(sum(data["objective_shares"].values()) - 1) < 1e-6
