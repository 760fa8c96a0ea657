"""Linear dense probe (semantic segmentation) on frozen ViT patch tokens.

    python eval_common/eval_segmentation.py --pretrained OUT/main_vit_checkpoint.pth [--compare_random_init] [key=value ...]

Data: canvases pasted together from the real images of the config's dataset (``data.name``,
e.g. Digits or FashionMNIST; train canvases from ``--train_split``, test canvases from
``--test_split``): 1-4 items per canvas at random positions, mask = item class + 1 on its
foreground (grey > ``--threshold``), 0 elsewhere (``hirl_like.evaluation.segmentation_data``).
Canvases are the backbone's trained ``img_size`` unless ``--canvas_size`` (a multiple of the patch
size) says otherwise, seeded by ``--seed`` and cached under ``--cache_dir``. Probe: a 1x1 conv on
the last-layer patch tokens, logits upsampled bilinearly to the mask, per-pixel cross-entropy
(``hirl_like.evaluation.segmentation_probe``). Reports mIoU (classes present in ground truth or
prediction) and pixel accuracy against an all-background reference; writes
``eval_segmentation.json`` beside the checkpoint. Runs on one process (under ``launch.py`` with
several ranks, rank 0 does the work).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf

from hirl_like.cli.eval_shared import (
    add_random_init_argument,
    backbones_to_evaluate,
    eval_entry,
    eval_parser,
    run_eval,
    start,
    write_report,
)
from hirl_like.evaluation.report import format_table
from hirl_like.evaluation.segmentation_data import CanvasSpec, SegmentationSet, cached_canvases
from hirl_like.evaluation.segmentation_metrics import segmentation_scores
from hirl_like.evaluation.segmentation_probe import (
    OPTIMIZERS,
    check_canvas_size,
    constant_confusion,
    patch_token_features,
    probe_confusion,
    train_dense_probe,
    vit_geometry,
)
from hirl_like.registry import DATASETS

CONSTANT = "all background"  # the trivial reference row


def build_parser() -> argparse.ArgumentParser:
    parser = eval_parser(__doc__)
    parser.add_argument("-c", dest="config", default=None, help="short for --config")
    parser.add_argument("--canvas_size", type=int, default=None, help="canvas side in pixels (default: the ViT's img_size)")
    parser.add_argument("--item_size", type=int, default=None, help="side of each pasted item (default: canvas_size // 2)")
    parser.add_argument("--num_train", type=int, default=2000, help="training canvases")
    parser.add_argument("--num_test", type=int, default=500, help="test canvases")
    parser.add_argument("--min_items", type=int, default=1)
    parser.add_argument("--max_items", type=int, default=4)
    parser.add_argument("--threshold", type=int, default=50, help="grey level (0..255) above which an item pixel is foreground")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--weight_decay", type=float, default=1e-4)
    parser.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    parser.add_argument("--head_batch_size", type=int, default=64, help="canvases per probe step")
    parser.add_argument("--seed", type=int, default=0, help="canvases (train: seed, test: seed + 1) and the head")
    parser.add_argument("--cache_dir", default=None, help="where canvas sets are cached (default: ~/.cache/hirl_like/segmentation)")
    add_random_init_argument(parser)
    return parser


def _canvases(cfg: Any, split: str, spec: CanvasSpec, cache_dir: str | None) -> tuple[SegmentationSet, str]:
    """The canvas set of one split of ``cfg.data`` (items read without any transform) and its cache file."""
    node = OmegaConf.to_container(cfg.data, resolve=True)
    dataset = DATASETS.build({**node, "split": split}, transform=None, tokenizer=None)
    data, path = cached_canvases(dataset, spec, node, split, cache_dir)
    return data, str(path)


def _probe_row(backbone: Any, train: SegmentationSet, test: SegmentationSet, args: argparse.Namespace, device: Any) -> dict:
    """mIoU / pixel accuracy / per-class IoU of the linear probe on one backbone."""
    train_x = patch_token_features(backbone, train.images, args.batch_size, device)
    test_x = patch_token_features(backbone, test.images, args.batch_size, device)
    head, mean, std = train_dense_probe(
        train_x, train.masks, train.num_classes, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
        batch_size=args.head_batch_size, optimizer=args.optimizer, seed=args.seed, device=device,
    )
    return segmentation_scores(probe_confusion(head, mean, std, test_x, test.masks, test.num_classes, args.batch_size, device))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("num_train", "num_test", "epochs", "head_batch_size", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1")
    cfg, dist = start(args)
    models, source = backbones_to_evaluate(cfg, args)
    img_size, patch = vit_geometry(models[0][1])
    canvas = args.canvas_size or img_size
    check_canvas_size(canvas, patch, img_size)
    item = args.item_size or canvas // 2
    if dist.rank != 0:
        return 0
    t0 = time.perf_counter()
    shared = dict(canvas_size=canvas, item_size=item, min_items=args.min_items, max_items=args.max_items,
                  threshold=args.threshold)
    train, train_cache = _canvases(cfg, args.train_split, CanvasSpec(args.num_train, seed=args.seed, **shared), args.cache_dir)
    test, test_cache = _canvases(cfg, args.test_split, CanvasSpec(args.num_test, seed=args.seed + 1, **shared), args.cache_dir)
    if train.num_classes != test.num_classes:
        raise ValueError(f"the {args.train_split} and {args.test_split} splits number their classes differently "
                         f"({train.num_classes - 1} vs {test.num_classes - 1}).")
    results = {label: _probe_row(backbone, train, test, args, dist.device) for label, backbone in models}
    constant = segmentation_scores(constant_confusion(test.masks, test.num_classes))
    rows = [{"model": label, "miou": r["miou"], "pixel_acc": r["pixel_acc"]} for label, r in results.items()]
    rows.append({"model": CONSTANT, "miou": constant["miou"], "pixel_acc": constant["pixel_acc"]})
    title = (f"dense linear probe ({cfg.data.name}, {canvas}px canvases of 1..{args.max_items} {item}px items, "
             f"{(canvas // patch) ** 2} patch tokens, {len(train)} train / {len(test)} test, {train.num_classes} classes, "
             f"{args.epochs} epochs, {time.perf_counter() - t0:.0f}s)")
    print(format_table(rows, ["model", "miou", "pixel_acc"], title=title))
    write_report(args, "segmentation", {
        "checkpoint": source,
        "dataset": str(cfg.data.name),
        "train_split": args.train_split,
        "test_split": args.test_split,
        "train_size": len(train),
        "test_size": len(test),
        "num_classes": train.num_classes,
        "img_size": img_size,
        "patch_size": patch,
        **shared,
        "seed": args.seed,
        "probe": {"epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay,
                  "optimizer": args.optimizer, "batch_size": args.head_batch_size},
        "cache": {"train": train_cache, "test": test_cache},
        "results": results,
        "constant_background": constant,
    })
    return 0


entry = eval_entry(main)

if __name__ == "__main__":
    run_eval(main)
