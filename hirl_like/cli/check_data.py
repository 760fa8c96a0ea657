"""Check a training data set before training: ``python tools/check_data.py -c CONFIG [key=value ...]``.

Builds the ``data`` node exactly as training does (``build_train_dataset``: same keys, and captions
required only when the config's pipeline has a text tower), reads every sample once, and prints
the bad samples by reason (with the first few paths), the shards that are cut short or not the
size their ``sizes.json`` says, and whether an epoch would exceed ``data.max_bad_fraction`` /
``data.max_bad_samples``. Works for every layout: ImageFolder, ImageCaptionFolder, CsvCaptions,
WebDatasetShards, Digits, FashionMNIST.

Exit code: 0 when every sample reads and every shard is whole, 1 when something is bad (the
report says what), 2 for a config or input error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from omegaconf import DictConfig

import hirl_like  # noqa: F401  (registers every component)
from hirl_like.cli.common import config_parser, console_entry, run_cleanly
from hirl_like.config import load_config
from hirl_like.data.build import build_train_dataset
from hirl_like.data.check import check_dataset
from hirl_like.data.pipe_urls import ALLOW_PIPE_URLS_FLAG, ALLOW_PIPE_URLS_HELP, allow_pipe_urls
from hirl_like.registry import PIPELINES


def pipeline_needs_text(cfg: DictConfig) -> bool:
    """Whether training would tokenise captions: the pipeline built (on the meta device, so no
    memory or time goes to weights) has a text student, as the trainer decides."""
    with torch.device("meta"):
        pipeline = PIPELINES.build(cfg.pipeline)
    return getattr(pipeline.backbones, "student_text", None) is not None


def _progress(enabled: bool) -> tuple[Any, Callable[[int], None] | None]:
    """A tqdm bar and its update callback on a terminal; (None, None) in a redirected log."""
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(desc="check", unit=" samples", dynamic_ncols=True)

    def update(n: int) -> None:
        bar.update(n - bar.n)

    return bar, update


def main(argv: Sequence[str] | None = None) -> int:
    parser = config_parser(__doc__)
    parser.add_argument("--num_workers", type=int, default=None, help="loader workers (default: the config's num_workers)")
    parser.add_argument("--with_transform", action="store_true", help="also build the training views of every sample")
    parser.add_argument("--show", type=int, default=3, help="bad samples listed per reason (default 3)")
    parser.add_argument(ALLOW_PIPE_URLS_FLAG, dest="allow_pipe_urls", action="store_true", help=ALLOW_PIPE_URLS_HELP)
    args = parser.parse_intermixed_args(argv)
    if args.num_workers is not None and args.num_workers < 0:
        raise ValueError(f"--num_workers must be >= 0, got {args.num_workers}")
    if args.show < 0:
        raise ValueError(f"--show must be >= 0, got {args.show}")
    if args.allow_pipe_urls:
        allow_pipe_urls()
    cfg = load_config(args.config, args.overrides)
    needs_text = pipeline_needs_text(cfg)
    dataset = build_train_dataset(cfg, needs_text)
    workers = int(cfg.num_workers) if args.num_workers is None else args.num_workers
    captions = "captions required (the pipeline has a text tower)" if needs_text else "captions not needed (vision-only pipeline)"
    print(f"checking data.name={cfg.data.name}: {len(dataset)} samples, {captions}", flush=True)
    bar, update = _progress(sys.stderr.isatty())
    try:
        report = check_dataset(dataset, num_workers=workers, with_transform=args.with_transform, keep=args.show, on_progress=update)
    finally:
        if bar is not None:
            bar.close()
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


entry = console_entry(main)

if __name__ == "__main__":
    run_cleanly(main)
