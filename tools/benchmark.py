"""Benchmark training steps: ``python tools/benchmark.py -c CONFIG [key=value ...] [--vs CONFIG2]
[--batch-sizes 1,8,16,32]``.

For every batch size (per process) it times full training steps after warm-up, on a fixed batch
from the config's own data and views. The step is the trainer's own (``TrainStep`` in
``hirl_like/engine/train_step.py``: schedules, autocast forward, backward, the config's clipping,
optimizer step, EMA update), so the time is that of training. It reports the median and spread
of the step time, images per second, peak memory (process RSS above the idle process on CPU,
peak allocated on CUDA), the matmul FLOPs of one step and the model FLOPs utilisation (against
a dense matmul measured on the same device and dtype), the share of each objective (each timed
alone at the largest batch size) and the data loader's own throughput for the same views. With
``--vs`` both configs are measured in one run and the ratios are printed in the layout of the
Harmony paper's Table 6 (memory and time relative to the second config at each batch size),
beside the FLOP ratio that bounds the time ratio when both steps run at the same utilisation.

Text tokens (issue 18): caption batches are cut to their longest caption rounded up to a multiple
of 8 (``hirl_like/data/tokenizer.py``). Each measurement reports the text tokens of one step: the
real ones (SOT through EOT of each caption) and the computed ones (B x L of every text-tower
pass: student, EMA teacher, masked student), counted at the towers' token embeddings.
``--text-padding context`` pads the batch back to the full context (the toolbox before the cut);
``--text-padding both`` measures both in one run and prints a before/after table (real vs
computed tokens, step time ratio, peak memory). Gradient checkpointing and the chunked CLIP loss
are config keys (``pipeline.vision.grad_checkpointing=true pipeline.text.grad_checkpointing=true
pipeline.clip.chunk_size=256``), passed as overrides like any other.

Speed options (issue 18) are config keys too: ``compile=true`` (every Transformer / ResNet block
compiled; FLOPs and tokens are then counted in eager mode, and the first step's time, compilation
included, is reported), ``channels_last=true``, ``precision=bf16|fp16``, ``tf32=false``,
``optimizer.fused=auto|true|false|foreach``.

Data loading (item 5): at the largest batch size the loader is also timed alone and then feeds
``--data-batches`` training steps of the next epoch through the trainer's own loaders
(:class:`~hirl_like.data.loader.TrainLoaders`: persistent workers for map-style data); the share
of the time spent blocked in ``next(loader)`` is printed. ``--digits-shards`` streams the digits
from WebDataset tar shards written under ``output/benchmark/digits_shards`` instead.

``--paper-row`` counts the FLOPs of one step of the paper's ViT-S/16 Harmony and CLIP recipes
(224/96 px, 2 + 8 crops, captions padded to 77 tokens as the public code computes them) at
``--paper-row-batch`` and prints their ratio beside the paper's 4.1x; no timing, so it runs on a CPU.
``--gpu-check`` (``tools/gpu_check.sh``) measures :data:`GPU_CHECK_ROWS` on one GPU and prints
MFU against the device's dense bf16 datasheet peak (:data:`BF16_PEAK_TFLOPS`).

Each measurement runs in a fresh subprocess so that peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# child: one measurement
# ------------------------------------------------------------------------------------------
def _rss_mb(field: str) -> float:
    """VmRSS / VmHWM of this process in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    try:  # Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def matmul_peak_tflops(device: "torch.device", dtype: "torch.dtype", size: int, repeats: int = 5) -> float:
    """Best TFLOP/s of a dense (size x size) @ (size x size) matmul: the reference for FLOPs
    utilisation. Measured rather than read from a datasheet, so it holds on any device and dtype."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up the kernels
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - tic)
    return 2 * size**3 / best / 1e12


# Schedules of a benchmark step: iteration 200 of 100 per epoch is past every warm-up and frozen
# first epoch, so every term of every objective is active (the lr value does not change the cost).
BENCH_ITERS_PER_EPOCH, BENCH_ITERATIONS, BENCH_FIRST_ITERATION = 100, 10_000, 200


def prepare_step(config: str, overrides: list[str], batch_size: int):
    """(train step, batch, progress(i), dataset, cfg): the trainer's own :class:`TrainStep` built from
    the config (its optimizer, clipping, autocast and scaler) on the first batch of the config's data.

    The pipeline is initialised from ``cfg.seed`` as the trainer does, so one step here and one
    ``Trainer.train_step`` on the same batch and progress give the same parameters
    (tests/tools/test_benchmark_step.py).
    """
    import torch

    from hirl_like.config import load_config
    from hirl_like.data.bad_samples import BAD_KEY
    from hirl_like.data.build import build_train_dataset
    from hirl_like.data.loader import build_train_loader
    from hirl_like.engine.train_step import TrainStep, move_to
    from hirl_like.registry import PIPELINES
    from hirl_like.schedules import Progress

    cfg = load_config(config, [*overrides, f"batch_size={batch_size}"])
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    torch.manual_seed(int(cfg.seed))
    pipeline = PIPELINES.build(cfg.pipeline).to(device).train()
    needs_text = getattr(pipeline.backbones, "student_text", None) is not None
    dataset = build_train_dataset(cfg, needs_text)
    # The first batch of the training loader: works for map-style and streaming (WebDataset) data.
    batch = next(iter(build_train_loader(dataset, batch_size=batch_size, num_workers=0, seed=0, epoch=0)))
    batch.pop(BAD_KEY, None)
    batch = move_to(batch, device)
    step = TrainStep.from_config(
        cfg, pipeline, device=device, global_batch=batch_size, iters_per_epoch=BENCH_ITERS_PER_EPOCH,
        schedule_iterations=BENCH_ITERATIONS,
    )

    def progress(i: int) -> Progress:
        return Progress(BENCH_FIRST_ITERATION + i, BENCH_ITERS_PER_EPOCH, BENCH_ITERATIONS, int(cfg.seed))

    return step, batch, progress, dataset, cfg


TEXT_PADDINGS = ("batch", "context")


def pad_text(batch: dict, context_length: int, padding: str) -> dict:
    """The batch with its captions at the batch length (``"batch"``, what the loader gives) or
    padded back to ``context_length`` (``"context"``: the fixed length used before issue 18)."""
    import torch.nn.functional as F

    from hirl_like.data.tokenizer import PAD_TOKEN_ID

    if padding not in TEXT_PADDINGS:
        raise ValueError(f"text padding must be one of {TEXT_PADDINGS}, got {padding!r}")
    text = batch.get("text")
    if padding == "context" and text is not None and text.shape[1] < context_length:
        batch = {**batch, "text": F.pad(text, (0, context_length - text.shape[1]), value=PAD_TOKEN_ID)}
    return batch


def text_towers(pipeline) -> list:
    """The text towers of a pipeline (student and EMA teacher), those that exist."""
    backbones = getattr(pipeline, "backbones", None)
    return [m for m in (getattr(backbones, "student_text", None), getattr(backbones, "teacher_text", None)) if m is not None]


def count_text_tokens(pipeline, run_step) -> dict[str, int]:
    """Text tokens of one step, over every text-tower pass: ``real`` (SOT..EOT of each caption) and
    ``computed`` (B x L per pass), read at the towers' token embeddings (every pass goes through
    them), plus the number of passes."""
    from hirl_like.data.tokenizer import caption_lengths

    counts = {"text_passes": 0, "text_real_tokens": 0, "text_computed_tokens": 0}

    def hook(module, args) -> None:
        ids = args[0]
        counts["text_passes"] += 1
        counts["text_computed_tokens"] += int(ids.numel())
        counts["text_real_tokens"] += int(caption_lengths(ids.reshape(-1, ids.shape[-1])).sum())

    handles = [tower.token_embedding.register_forward_pre_hook(hook) for tower in text_towers(pipeline)
               if hasattr(tower, "token_embedding")]
    try:
        run_step()
    finally:
        for handle in handles:
            handle.remove()
    return counts


def measure(config: str, overrides: list[str], batch_size: int, steps: int, warmup: int, data_batches: int,
            text_padding: str = "batch") -> dict:
    import torch

    # Imported before the idle RSS is read, so that peak memory counts the step, not the code.
    import hirl_like.data.build  # noqa: F401
    import hirl_like.engine.train_step  # noqa: F401
    import hirl_like.registry  # noqa: F401
    from hirl_like.data.build import text_context_length
    from hirl_like.data.loader import TrainLoaders

    _reset_peak_rss()
    idle_rss = _rss_mb("VmRSS")
    train_step, batch, progress, dataset, cfg = prepare_step(config, overrides, batch_size)
    context_length = text_context_length(cfg)
    batch = pad_text(batch, context_length, text_padding)
    device, dtype = train_step.device, train_step.autocast_dtype
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(i: int) -> None:
        train_step(batch, progress(i))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    first_step_s = None  # the first step: with compile: true it holds the compilation
    for i in range(warmup):
        tic = time.perf_counter()
        step(i)
        sync()
        first_step_s = time.perf_counter() - tic if first_step_s is None else first_step_s
    sync()
    times = []
    for i in range(steps):
        tic = time.perf_counter()
        step(warmup + i)
        sync()
        times.append(time.perf_counter() - tic)
    median = statistics.median(times)
    result = {
        "batch_size": batch_size,
        "device": str(device),
        "step_time_median_s": median,
        "step_time_iqr_s": (statistics.quantiles(times, n=4)[2] - statistics.quantiles(times, n=4)[0]) if len(times) >= 4 else 0.0,
        "step_time_min_s": min(times),
        "images_per_s": batch_size / median,
        "text_padding": text_padding,
        "precision": str(cfg.precision),
        "compile": bool(cfg.compile),
        "first_step_s": first_step_s,
    }
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name(device)
    # Peak memory is read before the FLOP-counting step, whose bookkeeping would add to it.
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_memory_mb"] = _rss_mb("VmHWM") - idle_rss
    # Matmul/convolution/attention FLOPs of one whole step (forward and backward): the work the
    # method defines, so a time ratio can be read against the FLOP ratio on any device.
    # Counted in eager mode (compiled blocks would hide their ops from the counter; same work).
    with eager_mode():
        result["flops_per_step"] = count_flops(lambda: step(warmup + steps))
        if "text" in batch:
            result["text_context_length"] = context_length
            result["text_length"] = int(batch["text"].shape[1])
            result.update(count_text_tokens(train_step.pipeline, lambda: step(warmup + steps + 1)))
    result["achieved_tflops"] = result["flops_per_step"] / median / 1e12
    # Model FLOPs utilisation against the measured matmul peak in the step's compute dtype.
    peak_dtype = dtype if dtype is not None and device.type == "cuda" else torch.float32
    result["matmul_peak_tflops"] = matmul_peak_tflops(device, peak_dtype, 8192 if device.type == "cuda" else 1024)
    result["mfu"] = result["achieved_tflops"] / result["matmul_peak_tflops"]
    if data_batches:
        # The trainer's loaders (workers, pinning, prefetching; map-style workers persist across epochs).
        loaders = TrainLoaders(dataset, batch_size=batch_size, num_workers=int(cfg.num_workers), seed=0,
                               pin_memory=device.type == "cuda")
        tic = time.perf_counter()
        it = iter(loaders.for_epoch(0))
        next(it)  # workers started
        result["loader_cold_start_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        n = 0
        for _ in range(data_batches):
            try:
                n += len(next(it)["index"])
            except StopIteration:
                break
        result["loader_images_per_s"] = n / (time.perf_counter() - tic)
        del it
        # Training from the loader as the trainer's loop does: the last batches of epoch 1, then
        # epoch 2 (an epoch boundary half-way, where a per-epoch loader would start its workers).
        before_boundary = min(max(data_batches // 2, 1), len(loaders.for_epoch(1)))

        def batches():
            yield from loaders.for_epoch(1, len(loaders.for_epoch(1)) - before_boundary)
            yield from loaders.for_epoch(2)

        result.update(loader_wait(batches(), lambda b, i: step_on(train_step, b, progress(warmup + steps + 2 + i)),
                                  data_batches, sync, boundary=before_boundary))
        result["loader_persistent_workers"] = loaders.persistent_workers and not loaders.streaming and loaders.num_workers > 0
        loaders.close()
    return result


def step_on(train_step, batch: dict, progress) -> None:
    """One training step on a loader's batch, as the trainer takes it (bad samples set aside)."""
    from hirl_like.data.bad_samples import BAD_KEY

    batch.pop(BAD_KEY, None)
    train_step(batch, progress)


def loader_wait(loader, run_step, batches: int, sync=lambda: None, boundary: int | None = None) -> dict:
    """Train ``batches`` steps from ``loader`` (any iterable of batches) as the trainer's loop does
    and time the main process blocked in ``next(iterator)`` (waiting for the loader) against the steps.

    ``loader_wait_fraction``: wait / (wait + step) from the second batch on (what training pays);
    ``loader_first_batch_s``: the first ``next`` (the iteration starting);
    ``loader_wait_fraction_with_start``: both; ``loader_epoch_boundary_wait_s``: the wait for batch
    ``boundary``, the first of a new epoch (workers started anew for streaming data; prefetched by
    the trainer's persistent map-style loader).
    """
    tic = time.perf_counter()
    it = iter(loader)
    waits, steps = [], []
    for i in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        waits.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        run_step(batch, i)
        sync()
        steps.append(time.perf_counter() - tic)
        tic = time.perf_counter()
    del it
    if not waits:
        return {}
    steady_wait, steady_step = sum(waits[1:]), sum(steps[1:])
    boundary_wait = {"loader_epoch_boundary_wait_s": waits[boundary]} if boundary is not None and boundary < len(waits) else {}
    return {**boundary_wait,
        "loader_wait_batches": len(waits),
        "loader_first_batch_s": waits[0],
        "loader_wait_fraction": steady_wait / (steady_wait + steady_step) if len(waits) > 1 else float("nan"),
        "loader_wait_fraction_with_start": sum(waits) / (sum(waits) + sum(steps)),
    }


def eager_mode():
    """A context in which compiled modules run eagerly (``torch.compiler.set_stance``)."""
    import torch

    return torch.compiler.set_stance("force_eager")


def count_flops(run) -> int:
    """Matmul / convolution / attention FLOPs (forward and backward) of ``run()``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def measure_flops(config: str, overrides: list[str], batch_size: int, text_padding: str = "batch") -> dict:
    """FLOPs of one training step, without timing (the paper-recipe row: one step at a small batch)."""
    from hirl_like.data.build import text_context_length

    train_step, batch, progress, _, cfg = prepare_step(config, overrides, batch_size)
    batch = pad_text(batch, text_context_length(cfg), text_padding)
    out = {"batch_size": batch_size, "device": str(train_step.device), "text_padding": text_padding,
           "flops_per_step": count_flops(lambda: train_step(batch, progress(0)))}
    if "text" in batch:
        out["text_length"] = int(batch["text"].shape[1])
    return out


# ------------------------------------------------------------------------------------------
# figures against the device's datasheet, the paper's recipe, a local WebDataset shard set
# ------------------------------------------------------------------------------------------
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's datasheets, matched in this
# order against torch.cuda.get_device_name() (the more specific names first; None: no published
# figure, reported as unknown). GeForce figures are with fp32 accumulation.
BF16_PEAK_TFLOPS: tuple[tuple[str, float | None], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A10G", None), ("A10", 125.0), ("A6000", 155.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
)


def datasheet_bf16_peak(device_name: str | None) -> float | None:
    """The device's dense bf16 peak (TFLOP/s) from :data:`BF16_PEAK_TFLOPS`, None when not listed."""
    if not device_name:
        return None
    name = device_name.upper()
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key.upper() in name), None)


def datasheet_mfu(result: dict) -> tuple[float | None, str]:
    """(MFU against the device's bf16 datasheet peak, how it was obtained) for one measurement."""
    name = result.get("device_name")
    peak = datasheet_bf16_peak(name)
    if peak is None:
        return None, (f"unknown device {name!r}: no bf16 peak in BF16_PEAK_TFLOPS (tools/benchmark.py); "
                      "MFU only against the measured matmul" if name else "no CUDA device: no datasheet peak")
    return result["achieved_tflops"] / peak, f"{name}: {peak:g} TFLOP/s dense bf16 (datasheet)"


# The paper's ViT-S/16 recipes (Table 6: Harmony 4.1x CLIP's time and memory at per-GPU batch 32),
# on the digits upsampled to 224 px so that no CC3M copy is needed; the step's FLOPs do not
# depend on the pixels (the captions are digits' templates, cut to their batch length).
PAPER_HARMONY = "configs/pretrain/harmony/harmony_vit_small_cc3m_25ep.yaml"
PAPER_CLIP = "configs/pretrain/clip/clip_vit_small_cc3m_25ep.yaml"
PAPER_OVERRIDES = ["data.name=Digits", "data.image_size=224", "num_workers=0", "precision=fp32"]  # fp16 matmuls crawl on a CPU
PAPER_TIME_RATIO = 4.1


def write_digits_shards(folder: str | Path, shards: int = 8, split: str = "train", image_size: int = 32) -> list[Path]:
    """The digits (``split``) as WebDataset tar shards ``00000.tar``...: ``<key>.png`` + ``<key>.txt``
    (the epoch-0 templated caption), for timing the streaming loader on this machine."""
    import io

    import webdataset as wds

    from hirl_like.data.digits import DigitsDataset

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ds = DigitsDataset(split, image_size=image_size)
    per_shard = -(-len(ds) // shards)
    paths = []
    for s in range(shards):
        path = folder / f"{s:05d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for i in range(s * per_shard, min(len(ds), (s + 1) * per_shard)):
                img, label = ds.load(i)
                buf = io.BytesIO()
                img.save(buf, "PNG")
                writer.write({"__key__": f"{i:06d}", "png": buf.getvalue(), "txt": ds.caption_for(i, label)})
        paths.append(path)
    (folder / "sizes.json").unlink(missing_ok=True)  # recounted by WebDatasetShards
    return paths


DIGITS_SHARDS = "output/benchmark/digits_shards"


def digits_shards_overrides(folder: Path, shards: int = 8) -> list[str]:
    """Write the digits' training split as ``shards`` tar shards into ``folder`` and return the
    overrides that make a config stream them (``WebDatasetShards``; the node's other keys dropped)."""
    write_digits_shards(folder, shards)
    return ["data.name=WebDatasetShards", f"data.urls={folder}/{{00000..{shards - 1:05d}}}.tar", "data.shuffle_buffer=256"]


# ------------------------------------------------------------------------------------------
# parent: orchestration and report
# ------------------------------------------------------------------------------------------
def run_child(config: str, overrides: list[str], batch_size: int, args: argparse.Namespace, data_batches: int,
              text_padding: str = "batch", flops_only: bool = False) -> dict:
    cmd = [
        sys.executable, __file__, "--_child", "-c", config, "--batch-sizes", str(batch_size),
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--data-batches", str(data_batches),
        "--text-padding", text_padding, *(["--_flops"] if flops_only else []), *overrides,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark of {config} at batch {batch_size} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def objective_shares(config: str, overrides: list[str], batch_size: int, args: argparse.Namespace) -> dict[str, float]:
    """Step time of each objective trained alone (same models), as a share of their sum."""
    from hirl_like.config import load_config
    from hirl_like.pipelines.composed import parse_objectives

    cfg = load_config(config, overrides)
    if "objectives" not in cfg.pipeline:
        return {}
    names = list(parse_objectives(cfg.pipeline.objectives))
    if len(names) < 2:
        return {}
    padding = "batch" if args.text_padding == "both" else args.text_padding
    times = {n: run_child(config, [*overrides, f"pipeline.objectives=[{n}]"], batch_size, args, 0, padding)["step_time_median_s"]
             for n in names}
    total = sum(times.values())
    return {n: t / total for n, t in times.items()}


def fmt(x: float | None, unit: str = "") -> str:
    return "-" if x is None else f"{x:.3g}{unit}"


def tokens_cell(r: dict) -> str:
    """``real / computed (L of C)`` text tokens of one step, or '-' for a run without captions."""
    if "text_computed_tokens" not in r:
        return "-"
    return (f"{r['text_real_tokens']} / {r['text_computed_tokens']} "
            f"(L {r['text_length']} of {r['text_context_length']})")


def print_before_after(config: str, before: list[dict], after: list[dict]) -> None:
    """Captions padded to the context (before) vs cut to the batch length (after), measured in this run."""
    print(f"\ntext at the batch length: {Path(config).stem} ({after[0]['device']}), before = padded to the context")
    print("| batch | text tokens real / computed, before | after | step time before | after | time after/before "
          "| peak MiB before | after | memory after/before |")
    print("|---|---|---|---|---|---|---|---|---|")
    for b, a in zip(before, after):
        print(f"| {a['batch_size']} | {tokens_cell(b)} | {tokens_cell(a)} | {fmt(b['step_time_median_s'] * 1e3)} ms | "
              f"{fmt(a['step_time_median_s'] * 1e3)} ms | {a['step_time_median_s'] / b['step_time_median_s']:.2f}x | "
              f"{fmt(b['peak_memory_mb'])} | {fmt(a['peak_memory_mb'])} | "
              f"{a['peak_memory_mb'] / b['peak_memory_mb']:.2f}x |")


def paper_row(args: argparse.Namespace, overrides: list[str] = ()) -> dict:
    """FLOPs of one step of the paper's ViT-S/16 Harmony and CLIP recipes (one step each at
    ``--paper-row-batch``; no timing, so it runs on a CPU) and their ratio beside the paper's 4.1x."""
    batch = int(args.paper_row_batch)
    # Captions padded to the 77-token context, as the public code the paper timed computes them.
    harmony = run_child(PAPER_HARMONY, [*PAPER_OVERRIDES, *overrides], batch, args, 0, "context", flops_only=True)
    clip = run_child(PAPER_CLIP, [*PAPER_OVERRIDES, *overrides], batch, args, 0, "context", flops_only=True)
    ratio = harmony["flops_per_step"] / clip["flops_per_step"]
    print(f"\npaper recipe, ViT-S/16 (224 px globals x 2 + 96 px locals x 8 for Harmony, one 224 px view for CLIP; "
          f"12-layer 512-wide text, captions padded to {harmony.get('text_length', '-')} tokens as in the paper's code), "
          f"batch {batch}, counted on {harmony['device']} ({Path(PAPER_HARMONY).stem} vs {Path(PAPER_CLIP).stem})")
    print("| recipe | batch | Harmony GFLOP/step | CLIP GFLOP/step | FLOPs Harmony / CLIP | paper Table 6 (time and memory, batch 32) |")
    print("|---|---|---|---|---|---|")
    print(f"| ViT-S/16 224/96 px, 2 + 8 crops | {batch} | {fmt(harmony['flops_per_step'] / 1e9)} | "
          f"{fmt(clip['flops_per_step'] / 1e9)} | {ratio:.2f}x | {PAPER_TIME_RATIO}x |")
    return {"batch_size": batch, "harmony": harmony, "clip": clip, "flops_ratio": ratio, "paper_ratio": PAPER_TIME_RATIO}


# What tools/gpu_check.sh measures: (label, config, overrides, batch size). The paper's ViT-S/16
# recipes in bf16 at Table 6's batch 32 per GPU, the public-code comparison config in fp32, and the
# digits benchmark pair (the README's CPU table) in bf16.
GPU_CHECK_ROWS: tuple[tuple[str, str, tuple[str, ...], int], ...] = (
    ("Harmony ViT-S/16 recipe, bf16", PAPER_HARMONY, (*PAPER_OVERRIDES, "precision=bf16"), 32),
    ("CLIP ViT-S/16 recipe, bf16", PAPER_CLIP, (*PAPER_OVERRIDES, "precision=bf16"), 32),
    ("Harmony ViT-Ti/16 96 px, fp32 (tf32)", "configs/benchmark/harmony_vit_tiny16_96px.yaml", ("num_workers=0",), 16),
    ("Harmony digits multicrop, bf16", "configs/benchmark/harmony_vit_tiny_digits_multicrop.yaml",
     ("num_workers=0", "precision=bf16"), 64),
    ("CLIP digits quickstart, bf16", "configs/quickstart/clip_vit_tiny_digits.yaml", ("num_workers=0", "precision=bf16"), 64),
)


def cuda_status() -> tuple[bool, str]:
    """(a CUDA device is usable, a line saying which one or why not)."""
    import torch

    if not torch.cuda.is_available():
        build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return False, (f"no CUDA device is visible (torch {torch.__version__}, {build}; "
                       f"CUDA_VISIBLE_DEVICES={__import__('os').environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}): "
                       "nothing was measured. Run this on a machine with an NVIDIA GPU.")
    return True, f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"


def gpu_check(args: argparse.Namespace) -> int:
    """One GPU: step time, images/s, MFU against the device's bf16 datasheet peak and peak memory of
    :data:`GPU_CHECK_ROWS`; stops starting rows once ``--budget-s`` is spent. Exit 2 without CUDA."""
    ok, line = cuda_status()
    if not ok:
        print(f"gpu_check: {line}", file=sys.stderr)
        return 2
    print(f"gpu_check on {line}")
    start, rows = time.perf_counter(), []
    print("| row | batch | precision | step time | images/s | TFLOP/s | MFU vs bf16 datasheet | MFU vs measured matmul "
          "| peak memory MiB | first step (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, config, overrides, batch in GPU_CHECK_ROWS:
        if time.perf_counter() - start > args.budget_s:
            print(f"| {label} | skipped: the {args.budget_s:g} s budget is spent |")
            continue
        try:
            r = run_child(config, [*overrides, *args.overrides], batch, args, 0)
        except RuntimeError as err:
            print(f"| {label} | failed: {str(err).splitlines()[-1][:200]} |")
            rows.append({"label": label, "error": str(err)[-3000:]})
            continue
        mfu, source = datasheet_mfu(r)
        r.update(label=label, config=config, datasheet_mfu=mfu, datasheet_source=source)
        rows.append(r)
        print(f"| {label} | {batch} | {r['precision']} | {fmt(r['step_time_median_s'] * 1e3)} ms | {fmt(r['images_per_s'])} | "
              f"{fmt(r['achieved_tflops'])} | {'-' if mfu is None else f'{100 * mfu:.1f}%'} | {100 * r['mfu']:.1f}% | "
              f"{fmt(r['peak_memory_mb'])} | {fmt(r['first_step_s'])} |", flush=True)
    done = [r for r in rows if "datasheet_source" in r]
    if done:
        print(f"(bf16 peak: {done[0]['datasheet_source']}; measured matmul: {fmt(done[0]['matmul_peak_tflops'])} TFLOP/s "
              f"in the row's precision; fp32 rows run matmuls in TF32 (tf32: true))")
    print(f"gpu_check: {len(done)} of {len(GPU_CHECK_ROWS)} rows in {time.perf_counter() - start:.0f} s")
    if args.output:
        Path(args.output).write_text(json.dumps({"device": line, "rows": rows}, indent=1))
    return 0 if len(done) == len(GPU_CHECK_ROWS) else 1


def print_loader(r: dict) -> None:
    """The data-loader lines of one measurement."""
    print(f"data loader: {fmt(r['loader_images_per_s'])} images/s at batch {r['batch_size']} "
          f"= {r['loader_images_per_s'] / r['images_per_s']:.2f}x what the training step consumes")
    if "loader_wait_fraction" in r:
        workers = "persistent workers" if r.get("loader_persistent_workers") else "workers started per epoch"
        print(f"training from the loader ({r['loader_wait_batches']} steps across an epoch boundary, {workers}): "
              f"{100 * r['loader_wait_fraction']:.1f}% of the time blocked in next(loader) after the first batch, "
              f"{100 * r['loader_wait_fraction_with_start']:.1f}% with it; waits: first batch {fmt(r['loader_first_batch_s'])} s, "
              f"first of the next epoch {fmt(r.get('loader_epoch_boundary_wait_s'))} s, "
              f"the run's first (workers starting) {fmt(r['loader_cold_start_s'])} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("-c", "--config", default=None)
    parser.add_argument("--vs", default=None, help="second config: ratios config / vs are printed (paper Table 6)")
    parser.add_argument("--batch-sizes", default="1,8,16,32")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--data-batches", type=int, default=10,
                        help="batches timed for the loader throughput, then steps trained from the loader (0 = skip)")
    parser.add_argument("--no-objective-shares", action="store_true")
    parser.add_argument("--text-padding", choices=(*TEXT_PADDINGS, "both"), default="batch",
                        help="captions at the batch length (the loader's), padded to the context (before issue 18), "
                             "or both, with a before/after table")
    parser.add_argument("--paper-row", action="store_true",
                        help="also count the FLOPs of the paper's ViT-S/16 Harmony and CLIP recipes (one step each)")
    parser.add_argument("--paper-row-batch", type=int, default=4)
    parser.add_argument("--gpu-check", action="store_true", help="the rows of tools/gpu_check.sh on one GPU")
    parser.add_argument("--budget-s", type=float, default=240, help="--gpu-check: start no row after this many seconds")
    parser.add_argument("--digits-shards", action="store_true",
                        help=f"read the data from the digits written as WebDataset tar shards ({DIGITS_SHARDS}), "
                             "streamed by WebDatasetShards: the loader figures of a streaming config")
    parser.add_argument("--output", default=None, help="write every figure to this JSON file")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_flops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to both configs")
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    if args._child:
        if args._flops:
            print(json.dumps(measure_flops(args.config, args.overrides, sizes[0], args.text_padding)))
            return 0
        print(json.dumps(measure(args.config, args.overrides, sizes[0], args.steps, args.warmup, args.data_batches,
                                 args.text_padding)))
        return 0
    if args.digits_shards:
        args.overrides = [*digits_shards_overrides(ROOT / DIGITS_SHARDS), *args.overrides]
    if args.gpu_check:
        return gpu_check(args)
    if args.config is None:
        if args.paper_row:
            paper = paper_row(args, args.overrides)  # alone, the overrides are the paper configs'
            if args.output:
                Path(args.output).write_text(json.dumps({"paper_row": paper}, indent=1))
            return 0
        parser.error("-c/--config is required (or --paper-row, --gpu-check, --write-digits-shards)")

    configs = [args.config] + ([args.vs] if args.vs else [])
    main_padding = "batch" if args.text_padding == "both" else args.text_padding
    results: dict[str, list[dict]] = {c: [] for c in configs}
    before: dict[str, list[dict]] = {c: [] for c in configs}  # --text-padding both: padded to the context
    for bs in sizes:
        for c in configs:
            if args.text_padding == "both":  # interleaved, so that load on the machine hits both alike
                before[c].append(run_child(c, args.overrides, bs, args, 0, "context"))
            results[c].append(run_child(c, args.overrides, bs, args, args.data_batches if bs == max(sizes) else 0,
                                        main_padding))
    shares = {} if args.no_objective_shares else objective_shares(args.config, args.overrides, max(sizes), args)

    for c in configs:
        first = results[c][0]
        print(f"\n{c} ({first.get('device_name', first['device'])}, {first['precision']}"
              f"{', compiled' if first['compile'] else ''}{', data: digits WebDataset shards' if args.digits_shards else ''})")
        print("| batch | step time median (IQR) | images/s | peak memory MiB | GFLOP/step | TFLOP/s | MFU "
              "| text tokens real / computed per step |")
        print("|---|---|---|---|---|---|---|---|")
        for r in results[c]:
            print(f"| {r['batch_size']} | {fmt(r['step_time_median_s'] * 1e3)} ms ({fmt(r['step_time_iqr_s'] * 1e3)}) | "
                  f"{fmt(r['images_per_s'])} | {fmt(r['peak_memory_mb'])} | {fmt(r['flops_per_step'] / 1e9)} | "
                  f"{fmt(r['achieved_tflops'])} | {100 * r['mfu']:.1f}% | {tokens_cell(r)} |")
        print(f"(MFU: against a measured {fmt(first['matmul_peak_tflops'])} TFLOP/s dense matmul on this device)")
        mfu, source = datasheet_mfu(results[c][-1])
        if mfu is not None:
            print(f"(MFU at batch {results[c][-1]['batch_size']} against the bf16 datasheet peak, {source}: {100 * mfu:.1f}%)")
        if first["compile"]:
            print("(compile: true; first step including compilation: "
                  + ", ".join(f"{fmt(r['first_step_s'])} s at batch {r['batch_size']}" for r in results[c]) + ")")
        loader = [r for r in results[c] if "loader_images_per_s" in r]
        if loader:
            print_loader(loader[0])
    if shares:
        print(f"\nshare of each objective (each timed alone, batch {max(sizes)}): "
              + ", ".join(f"{n} {100 * s:.0f}%" for n, s in shares.items()))
    if args.vs:
        print(f"\nTable 6 layout: {Path(args.config).stem} relative to {Path(args.vs).stem} (measured in this run)")
        print("| batch per process | memory | time | FLOPs |")
        print("|---|---|---|---|")
        for a, b in zip(results[args.config], results[args.vs]):
            print(f"| {a['batch_size']} | {a['peak_memory_mb'] / b['peak_memory_mb']:.2f}x | "
                  f"{a['step_time_median_s'] / b['step_time_median_s']:.2f}x | {a['flops_per_step'] / b['flops_per_step']:.2f}x |")
    if args.text_padding == "both":
        for c in configs:
            print_before_after(c, before[c], results[c])
    paper = paper_row(args) if args.paper_row else None  # the recipes as published: no overrides
    if args.output:
        payload = {"results": results, "objective_shares": shares}
        if args.text_padding == "both":
            payload["results_padded_to_context"] = before
        if paper is not None:
            payload["paper_row"] = paper
        Path(args.output).write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
