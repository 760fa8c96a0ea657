#!/usr/bin/env bash
# GPU check (issue 18): the benchmark's Harmony and CLIP rows on one GPU, in under 5 minutes.
#   bash tools/gpu_check.sh [--budget-s 240] [--output gpu_check.json] [key=value ...]
# Prints, per row (tools/benchmark.py GPU_CHECK_ROWS: the paper's ViT-S/16 Harmony and CLIP
# recipes in bf16 at batch 32, the ViT-Ti/16 96-px config in fp32, the digits benchmark pair in
# bf16): step time, images/s, TFLOP/s, MFU against the device's dense bf16 datasheet peak
# (tools/benchmark.py BF16_PEAK_TFLOPS; an unknown device is named and gets no datasheet MFU),
# MFU against a matmul measured on the device, peak memory and the first step's time.
# Without a visible CUDA device it says so and exits with status 2.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
# One GPU: the first visible one unless the caller chose.
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
exec timeout --signal=INT 290 "$PYTHON" tools/benchmark.py --gpu-check --steps 10 --warmup 3 "$@"
