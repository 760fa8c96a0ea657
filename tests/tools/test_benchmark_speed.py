"""tools/benchmark.py, issue 18 items 3, 5 and 6: the loader-wait figures (map-style and WebDataset
data), FLOPs counted in eager mode under ``compile: true``, the paper's ViT-S/16 FLOP row, the
ViT-Ti/16 96-px config, and the GPU check's CPU side: "no CUDA" said clearly, MFU from the
datasheet peak table. No figure is asserted beyond its range (timings belong to the benchmark)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hirl_like.config import load_config
from tests.tools.test_benchmark_step import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
HARMONY = "configs/quickstart/harmony_vit_tiny_digits.yaml"
CLIP = "configs/quickstart/clip_vit_tiny_digits.yaml"
CLIP_TINY = ["pipeline.vision.depth=1", "pipeline.text.layers=1"]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark()


# -- GPU check: the peak table, MFU, no CUDA --------------------------------------------------
@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0),
    ("NVIDIA A10", 125.0), ("NVIDIA A10G", None), ("Tesla V100-SXM2-16GB", None), ("NVIDIA GH200 480GB", 989.0),
    ("", None), (None, None),
])
def test_datasheet_bf16_peaks(bench, name, peak):
    assert bench.datasheet_bf16_peak(name) == peak


def test_mfu_uses_the_peak_table(bench):
    mfu, source = bench.datasheet_mfu({"device_name": "NVIDIA H200", "achieved_tflops": 98.9})
    assert mfu == pytest.approx(0.1) and "989" in source and "H200" in source
    mfu, source = bench.datasheet_mfu({"device_name": "NVIDIA A100-SXM4-40GB", "achieved_tflops": 78.0})
    assert mfu == pytest.approx(0.25) and "312" in source
    mfu, source = bench.datasheet_mfu({"device_name": "Tesla T4", "achieved_tflops": 1.0})
    assert mfu is None and "unknown device 'Tesla T4'" in source
    assert bench.datasheet_mfu({"device": "cpu", "achieved_tflops": 0.1})[0] is None


def test_gpu_check_says_no_cuda_clearly():
    proc = subprocess.run([sys.executable, "tools/benchmark.py", "--gpu-check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "gpu_check: no CUDA device is visible" in proc.stderr and "nothing was measured" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_check_script_runs_as_is_without_a_gpu():
    proc = subprocess.run(["bash", "tools/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and "no CUDA device is visible" in proc.stderr, proc.stderr[-2000:]


def test_gpu_check_rows_and_table_with_a_stubbed_device(bench, monkeypatch, capsys, tmp_path):
    """The GPU path of --gpu-check on a CPU: CUDA and the measurements stubbed, the table, MFU and JSON real."""
    monkeypatch.setattr(bench, "cuda_status", lambda: (True, "NVIDIA H200 (stub)"))
    seen = []

    def fake_child(config, overrides, batch, args, data_batches, *rest, **kw):
        seen.append((config, tuple(overrides), batch))
        return {"batch_size": batch, "precision": "bf16", "step_time_median_s": 0.1, "images_per_s": batch / 0.1,
                "achieved_tflops": 197.8, "mfu": 0.3, "matmul_peak_tflops": 659.0, "peak_memory_mb": 1234.0,
                "first_step_s": 2.0, "device_name": "NVIDIA H200", "device": "cuda:0"}

    monkeypatch.setattr(bench, "run_child", fake_child)
    args = type("Args", (), {"budget_s": 240.0, "overrides": ["x=1"], "output": str(tmp_path / "gpu.json")})()
    assert bench.gpu_check(args) == 0
    out = capsys.readouterr().out
    assert out.count("| 20.0% |") == len(bench.GPU_CHECK_ROWS)  # 197.8 / 989 TFLOP/s
    assert "989 TFLOP/s dense bf16" in out and f"{len(bench.GPU_CHECK_ROWS)} of {len(bench.GPU_CHECK_ROWS)} rows" in out
    configs = {c for c, _, _ in seen}
    assert {bench.PAPER_HARMONY, bench.PAPER_CLIP, "configs/benchmark/harmony_vit_tiny16_96px.yaml"} <= configs
    assert all(o[-1] == "x=1" for _, o, _ in seen) and all((ROOT / c).exists() for c in configs)
    assert any("precision=bf16" in o for c, o, _ in seen if c == bench.PAPER_HARMONY)
    rows = json.loads((tmp_path / "gpu.json").read_text())["rows"]
    assert [r["datasheet_mfu"] for r in rows] == [pytest.approx(0.2)] * len(rows)
    args.budget_s = -1  # no time left: every row skipped, reported, status 1
    assert bench.gpu_check(args) == 1 and "skipped" in capsys.readouterr().out


# -- loader wait, shards, FLOPs under compile ------------------------------------------------
def test_loader_wait_accounting(bench):
    steps = []
    got = bench.loader_wait([{"i": 0}, {"i": 1}, {"i": 2}], lambda b, i: steps.append((b["i"], i)), 5)
    assert steps == [(0, 0), (1, 1), (2, 2)] and got["loader_wait_batches"] == 3
    assert 0 <= got["loader_wait_fraction"] <= 1 and 0 <= got["loader_wait_fraction_with_start"] <= 1
    assert got["loader_first_batch_s"] >= 0
    assert "loader_epoch_boundary_wait_s" not in got
    assert bench.loader_wait(iter([{"i": 0}, {"i": 1}]), lambda b, i: None, 2, boundary=1)["loader_epoch_boundary_wait_s"] >= 0
    assert math.isnan(bench.loader_wait([{"i": 0}], lambda b, i: None, 1)["loader_wait_fraction"])
    assert bench.loader_wait([], lambda b, i: None, 3) == {}


def test_measure_reports_the_loader_wait_of_the_trainers_loader(bench):
    r = bench.measure(CLIP, [*CLIP_TINY, "num_workers=1"], 8, steps=1, warmup=1, data_batches=4)
    assert r["loader_wait_batches"] == 4 and r["loader_persistent_workers"] is True
    assert r["loader_epoch_boundary_wait_s"] >= 0  # batch 2 of 4 is the first of the next epoch
    assert 0 <= r["loader_wait_fraction"] <= 1 and r["loader_cold_start_s"] > 0 and r["loader_images_per_s"] > 0
    assert r["first_step_s"] > 0 and r["compile"] is False and r["precision"] == "fp32" and r["flops_per_step"] > 0


def test_digits_shards_stream_through_webdataset(bench, tmp_path):
    overrides = bench.digits_shards_overrides(tmp_path / "shards", shards=4)
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.tar")) == [f"{i:05d}.tar" for i in range(4)]
    cfg = load_config(ROOT / CLIP, overrides)
    assert cfg.data.name == "WebDatasetShards"
    r = bench.measure(str(ROOT / CLIP), [*overrides, *CLIP_TINY, "num_workers=1"], 8, steps=1, warmup=1, data_batches=2)
    assert r["loader_wait_batches"] == 2 and r["loader_persistent_workers"] is False  # a stream: per-epoch workers
    assert r["loader_epoch_boundary_wait_s"] >= 0
    assert 0 <= r["loader_wait_fraction_with_start"] <= 1 and r["text_real_tokens"] > 0


def test_measure_flops_counts_one_step(bench):
    cut = bench.measure_flops(CLIP, [*CLIP_TINY, "num_workers=0"], 2)
    padded = bench.measure_flops(CLIP, [*CLIP_TINY, "num_workers=0"], 2, "context")
    assert padded["text_length"] == 32 > cut["text_length"] and padded["flops_per_step"] > cut["flops_per_step"] > 0


@pytest.mark.slow
def test_compiled_measurement_counts_the_eager_flops(bench):
    eager = bench.measure(CLIP, [*CLIP_TINY, "num_workers=0"], 4, steps=1, warmup=1, data_batches=0)
    compiled = bench.measure(CLIP, [*CLIP_TINY, "num_workers=0", "compile=true"], 4, steps=1, warmup=1, data_batches=0)
    assert compiled["compile"] is True and compiled["flops_per_step"] == eager["flops_per_step"]
    assert compiled["text_computed_tokens"] == eager["text_computed_tokens"]


@pytest.mark.slow
def test_paper_row_prints_the_vit_s16_flop_ratio(tmp_path):
    """The paper's full-size recipes, one step each at batch 1 on the CPU (about a minute)."""
    out = tmp_path / "paper.json"
    proc = subprocess.run([sys.executable, "tools/benchmark.py", "--paper-row", "--paper-row-batch", "1", "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ViT-S/16 224/96 px, 2 + 8 crops" in proc.stdout and "| 4.1x |" in proc.stdout
    row = json.loads(out.read_text())["paper_row"]
    assert row["harmony"]["text_length"] == row["clip"]["text_length"] == 77
    assert row["flops_ratio"] == pytest.approx(row["harmony"]["flops_per_step"] / row["clip"]["flops_per_step"])
    assert row["flops_ratio"] > 2 and row["paper_ratio"] == 4.1


# -- the ViT-Ti/16 96-px config ---------------------------------------------------------------
def test_vit_tiny16_96px_config_is_the_public_code_setting():
    cfg = load_config(ROOT / "configs/benchmark/harmony_vit_tiny16_96px.yaml")
    v, t, tr = cfg.pipeline.vision, cfg.pipeline.text, cfg.transform
    assert (v.arch, v.patch_size, v.img_size) == ("vit_tiny", 16, 96)
    assert (tr.global_crops, tr.global_size, tr.local_crops, tr.local_size) == (2, 96, 4, 48)
    assert cfg.batch_size == 16 and cfg.precision == "fp32" and cfg.compile is False
    assert (t.layers, t.width, t.context_length) == (12, 512, 77)
    assert cfg.pipeline.ibot.out_dim == cfg.pipeline.ibot.patch_out_dim == 1024
    assert cfg.pipeline.text_distill.out_dim == 1024 // 4  # the public code's text head: out_dim / 4
    assert list(cfg.pipeline.objectives) == ["clip", "ibot", "mae", "mlm", "text_distill"]
    assert cfg.data.name == "Digits" and cfg.data.image_size == 96
