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
    from hirl_like.data.loader import build_train_loader

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

    for i in range(warmup):
        step(i)
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
    }
    # Peak memory is read before the FLOP-counting step, whose bookkeeping would add to it.
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_memory_mb"] = _rss_mb("VmHWM") - idle_rss
    # Matmul/convolution/attention FLOPs of one whole step (forward and backward): the work the
    # method defines, so a time ratio can be read against the FLOP ratio on any device.
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(warmup + steps)
    result["flops_per_step"] = counter.get_total_flops()
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
        loader = build_train_loader(dataset, batch_size=batch_size, num_workers=int(cfg.num_workers), seed=0, epoch=0)
        it = iter(loader)
        next(it)  # workers started
        tic = time.perf_counter()
        n = 0
        for _ in range(data_batches):
            try:
                n += len(next(it)["index"])
            except StopIteration:
                break
        result["loader_images_per_s"] = n / (time.perf_counter() - tic)
    return result


# ------------------------------------------------------------------------------------------
# parent: orchestration and report
# ------------------------------------------------------------------------------------------
def run_child(config: str, overrides: list[str], batch_size: int, args: argparse.Namespace, data_batches: int,
              text_padding: str = "batch") -> dict:
    cmd = [
        sys.executable, __file__, "--_child", "-c", config, "--batch-sizes", str(batch_size),
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--data-batches", str(data_batches),
        "--text-padding", text_padding, *overrides,
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


def fmt(x: float, unit: str = "") -> str:
    return f"{x:.3g}{unit}"


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--vs", default=None, help="second config: ratios config / vs are printed (paper Table 6)")
    parser.add_argument("--batch-sizes", default="1,8,16,32")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--data-batches", type=int, default=10, help="batches timed for the loader throughput (0 = skip)")
    parser.add_argument("--no-objective-shares", action="store_true")
    parser.add_argument("--text-padding", choices=(*TEXT_PADDINGS, "both"), default="batch",
                        help="captions at the batch length (the loader's), padded to the context (before issue 18), "
                             "or both, with a before/after table")
    parser.add_argument("--output", default=None, help="write every figure to this JSON file")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to both configs")
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    if args._child:
        print(json.dumps(measure(args.config, args.overrides, sizes[0], args.steps, args.warmup, args.data_batches,
                                 args.text_padding)))
        return 0

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
        print(f"\n{c} ({results[c][0]['device']})")
        print("| batch | step time median (IQR) | images/s | peak memory MiB | GFLOP/step | TFLOP/s | MFU "
              "| text tokens real / computed per step |")
        print("|---|---|---|---|---|---|---|---|")
        for r in results[c]:
            print(f"| {r['batch_size']} | {fmt(r['step_time_median_s'] * 1e3)} ms ({fmt(r['step_time_iqr_s'] * 1e3)}) | "
                  f"{fmt(r['images_per_s'])} | {fmt(r['peak_memory_mb'])} | {fmt(r['flops_per_step'] / 1e9)} | "
                  f"{fmt(r['achieved_tflops'])} | {100 * r['mfu']:.1f}% | {tokens_cell(r)} |")
        print(f"(MFU: against a measured {fmt(results[c][0]['matmul_peak_tflops'])} TFLOP/s dense matmul on this device)")
        loader = [r for r in results[c] if "loader_images_per_s" in r]
        if loader:
            r = loader[0]
            print(f"data loader: {fmt(r['loader_images_per_s'])} images/s at batch {r['batch_size']} "
                  f"= {r['loader_images_per_s'] / r['images_per_s']:.2f}x what the training step consumes")
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
    if args.output:
        payload = {"results": results, "objective_shares": shares}
        if args.text_padding == "both":
            payload["results_padded_to_context"] = before
        Path(args.output).write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
