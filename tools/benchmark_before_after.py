"""Time the training step of an earlier commit against the working tree's, in one run on one machine.

    python tools/benchmark_before_after.py --before 60e89b8 --batch-sizes 8,32,64

``--before`` is unpacked (``git archive``) into a temporary folder and its own ``tools/benchmark.py``
runs there against its own package (``PYTHONPATH``); the working tree's benchmark runs here. Both
read the working tree's ``configs/`` (copied over the earlier tree's; ``--own-configs`` keeps the
earlier ones), so both time the same recipe text. The
two alternate batch size by batch size, so that load on the machine falls on both alike. Prints one
markdown table: step time, peak memory and MFU of each config before and after, the speed-up and
memory ratio (before / after), and the text tokens of a step now (real SOT..EOT against computed
B x L of every text pass) beside what the earlier code computed (every pass padded to the context).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIR = ("configs/quickstart/harmony_vit_tiny_digits.yaml", "configs/quickstart/clip_vit_tiny_digits.yaml")


def unpack(commit: str, into: Path) -> None:
    """The tree of ``commit`` as plain files under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def benchmark(tree: Path, configs: list[str], batch_size: int, steps: int, output: Path) -> dict[str, dict]:
    """Run ``tree``'s own tools/benchmark.py on its own package: {config: figures at batch_size}."""
    cmd = [sys.executable, "tools/benchmark.py", "-c", configs[0], *(["--vs", configs[1]] if len(configs) > 1 else []),
           "--batch-sizes", str(batch_size), "--steps", str(steps), "--data-batches", "0", "--no-objective-shares",
           "--output", str(output), "progress_bar=false"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return {c: runs[0] for c, runs in json.loads(output.read_text())["results"].items()}


def tokens(r: dict) -> str:
    """Now: real / computed text tokens of a step; before: every pass padded to the context."""
    if "text_computed_tokens" not in r:
        return "no text"
    padded = r["text_passes"] * r["batch_size"] * r["text_context_length"]
    return f"{r['text_real_tokens']} / {r['text_computed_tokens']} (before: {padded})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="60e89b8", help="the earlier commit (default: main before issue 18's changes)")
    parser.add_argument("--configs", nargs="+", default=list(PAIR), help="one or two configs, each present in both trees")
    parser.add_argument("--batch-sizes", default="8,32,64")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (after 3 warm-up steps)")
    parser.add_argument("--own-configs", action="store_true", help="the earlier commit reads its own configs/")
    parser.add_argument("--output", default=None, help="write every figure to this JSON file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        before_tree = Path(tmp) / "before"
        before_tree.mkdir()
        unpack(args.before, before_tree)
        if not args.own_configs:
            shutil.copytree(ROOT / "configs", before_tree / "configs", dirs_exist_ok=True)
        for bs in sizes:
            before = benchmark(before_tree, args.configs, bs, args.steps, Path(tmp) / "before.json")
            after = benchmark(ROOT, args.configs, bs, args.steps, Path(tmp) / "after.json")
            rows += [{"config": c, "batch_size": bs, "before": before[c], "after": after[c]} for c in args.configs]
    print(f"\nbefore = {args.before}, after = the working tree at {head} (one run, this machine, alternating)")
    print("| config | batch | step before | step after | speed-up | peak memory before / after | MFU before / after "
          "| text tokens real / computed per step |")
    print("|---|---|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: (args.configs.index(r["config"]), r["batch_size"])):
        b, a = row["before"], row["after"]
        print(f"| {Path(row['config']).stem} | {row['batch_size']} | {1e3 * b['step_time_median_s']:.1f} ms | "
              f"{1e3 * a['step_time_median_s']:.1f} ms | {b['step_time_median_s'] / a['step_time_median_s']:.2f}x | "
              f"{b['peak_memory_mb']:.0f} / {a['peak_memory_mb']:.0f} MiB ({b['peak_memory_mb'] / a['peak_memory_mb']:.2f}x) | "
              f"{100 * b['mfu']:.1f}% / {100 * a['mfu']:.1f}% | {tokens(a)} |")
    if args.output:
        Path(args.output).write_text(json.dumps({"before": args.before, "after": head, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
