"""End-to-end fine-tuning of the backbone with a new linear head; semi-supervised with a label fraction.

    python3 launch.py --launch eval_common/eval_finetune.py --pretrained OUT/main_vit_checkpoint.pth [--compare_random_init]
    python eval_common/eval_finetune.py --pretrained OUT/main_vit_checkpoint.pth --label_fraction 0.01

Recipes (every value a flag; :mod:`hirl_like.evaluation.finetune_recipe` gives the sources):
  ViT: BEiT / iBOT fine-tuning. AdamW, base lr 5e-4 x batch / 256, layer-wise lr decay 0.65,
       weight decay 0.05, drop path 0.1, mixup 0.8 / cutmix 1.0 / label smoothing 0.1,
       RandAugment rand-m9-mstd0.5-inc1 + random erasing 0.25, 100 epochs (5 warm-up) cosine to 1e-6.
  ResNet: SimCLR / BYOL fine-tuning. SGD (momentum 0.9, Nesterov), base lr 0.05 x batch / 256,
       no weight decay, no warm-up, cosine to 0, random resized crops (+ flip) only, 60 epochs.
Both: crop scale (0.5, 1) below 96 px (else (0.08, 1)); horizontal flips as the pre-training
config's ``transform.hflip`` (else 0.5); the head reads the [CLS] token (``--pool avg``: the mean
patch token) or a ResNet's pooled feature; on grey data (Digits, Fashion-MNIST) random erasing
fills with grey noise. ``--batch_size`` is per process, for training and
scoring; the lr scales with the global batch. The model after the last iteration is scored once
on ``--test_split`` (nothing is selected on it).

``--label_fraction F`` (0 < F <= 1) fine-tunes on a class-balanced subset of the training split
(``max(1, round(F * n_c))`` images of each class, seeded by ``--seed``), written to
``semisup_<F>_indices.json`` beside the results; ``--label_indices FILE`` reuses such a file.
Writes ``eval_finetune.json`` (``eval_semisup_<F>.json`` with a label subset) beside the
checkpoint; ``--compare_random_init`` adds the same architecture fine-tuned from random
initialisation with the same recipe, data and budget (``random_init``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hirl_like.cli.eval_shared import (
    PRETRAINED,
    RANDOM_INIT,
    add_random_init_argument,
    backbones_to_evaluate,
    eval_entry,
    eval_parser,
    num_classes_of,
    run_eval,
    start,
    write_report,
)
from hirl_like.cli.finetune_inputs import (
    add_finetune_arguments,
    backbones_or_arch_error,
    label_subset,
    recipe_from_args,
    train_dataset,
)
from hirl_like.data.build import build_eval_dataset, eval_image_size
from hirl_like.evaluation.features import has_tokens
from hirl_like.evaluation.finetune import LabelSubset, evaluate_classifier, finetune
from hirl_like.evaluation.finetune_model import FineTuneClassifier
from hirl_like.evaluation.report import format_table
from hirl_like.evaluation.semisup import write_indices


def _check_classes(args: argparse.Namespace, train_set: Any, labels: torch.Tensor, test_set: Any) -> int:
    """The head's class count: the data set's, which ``--num_classes`` (when given) must equal."""
    found = num_classes_of(train_set, labels)
    name = type(train_set).__name__
    if args.num_classes is not None and args.num_classes != found:
        raise ValueError(f"--num_classes {args.num_classes} does not match the data: the {args.train_split} split of "
                         f"{name} has {found} classes. Drop --num_classes or fine-tune on the data set of that head.")
    if labels.numel() and int(labels.max()) >= found:
        raise ValueError(f"the {args.train_split} split of {name} has labels up to {int(labels.max())} but {found} classes.")
    test_classes = len(getattr(test_set, "classnames", ()) or ()) or found
    if test_classes != found:
        raise ValueError(f"the {args.test_split} split has {test_classes} classes but the {args.train_split} split "
                         f"{found}: they are different data sets.")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = eval_parser(__doc__)
    add_finetune_arguments(parser)
    add_random_init_argument(parser)
    args = parser.parse_args(argv)
    if args.label_fraction is not None and args.label_indices is not None:
        parser.error("--label_fraction and --label_indices both choose the labelled images: pass one of them "
                     "(the indices file records its fraction).")
    if args.label_indices is not None and not Path(args.label_indices).is_file():  # before any heavy work
        raise FileNotFoundError(f"label indices file not found: {args.label_indices} (check --label_indices).")
    cfg, dist = start(args)
    models, source = backbones_or_arch_error(cfg, args, backbones_to_evaluate)
    is_vit = has_tokens(models[0][1])
    size = eval_image_size(cfg)
    recipe = recipe_from_args(args, cfg, is_vit, size)
    train_full, recipe = train_dataset(cfg, args, recipe, size)
    labels = torch.as_tensor(train_full.targets, dtype=torch.long)
    test_set = build_eval_dataset(cfg, args.test_split)
    num_classes = _check_classes(args, train_full, labels, test_set)

    subset = label_subset(args, cfg, labels)  # None, or {"name", "fraction", "indices", "path", "record", "new"}
    name = subset["name"] if subset else "finetune"
    train_set = LabelSubset(train_full, subset["indices"]) if subset else train_full
    if subset and subset["new"] and dist.rank == 0:  # a reused file is left as it is
        write_indices(subset["path"], subset["record"])
        print(f"wrote {subset['path']} ({len(train_set)} of {len(train_full)} images)")

    results, rows = {}, []
    for label, backbone in models:
        model = FineTuneClassifier(backbone, num_classes, pool=args.pool, head_init_std=recipe.head_init_std, seed=args.seed)
        if dist.rank == 0:
            print(f"fine-tuning {label} ({recipe.name}) on {len(train_set)} images for {recipe.epochs} epochs")
        run = finetune(model, train_set, recipe, batch_size=args.batch_size, num_workers=args.num_workers,
                       device=dist.device, seed=args.seed, rank=dist.rank, world_size=dist.world_size,
                       precision=args.precision)
        scores = evaluate_classifier(model, test_set, num_classes, batch_size=args.batch_size,
                                     num_workers=args.num_workers, device=dist.device, rank=dist.rank,
                                     world_size=dist.world_size)
        results[label] = {**scores, **run}
        rows.append({"model": label, "top1": scores["test_top1"], "top5": scores["test_top5"],
                     "final_loss": run["final_loss"], "iterations": run["iterations"], "lr": f"{run['lr']:.3g}"})
    if dist.rank == 0:
        what = f"{len(train_set)} of {len(train_full)} labels" if subset else f"{len(train_set)} train"
        title = f"fine-tuning ({cfg.data.name}, {recipe.name}, {what} / {results[PRETRAINED]['test_size']} test, {recipe.epochs} epochs)"
        print(format_table(rows, ["model", "top1", "top5", "final_loss", "iterations", "lr"], title=title))
        write_report(args, name, {
            "checkpoint": source,
            "dataset": str(cfg.data.name),
            "train_split": args.train_split,
            "test_split": args.test_split,
            "train_size": len(train_full),
            "train_used": len(train_set),
            "test_size": results[PRETRAINED]["test_size"],
            "num_classes": num_classes,
            "label_fraction": subset["fraction"] if subset else None,
            "label_indices": str(subset["path"]) if subset else None,
            "per_class": subset["record"]["per_class"] if subset else None,
            "image_size": size,
            "pool": args.pool if is_vit else "avgpool",
            "backbone": "vit" if is_vit else "resnet",
            "recipe": recipe.as_dict(),
            "seed": args.seed,
            "precision": args.precision,
            "world_size": dist.world_size,
            "results": results[PRETRAINED],
            **({"random_init": results[RANDOM_INIT]} if RANDOM_INIT in results else {}),
        })
    return 0


entry = eval_entry(main)

if __name__ == "__main__":
    run_eval(main)
