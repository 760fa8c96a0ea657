"""What ``eval_finetune`` reads from its command line: the recipe flags, the training data with
the recipe's views, the label subset, and the backbone (with a "pass --arch" hint when it does not fit)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from hirl_like.cli.eval_shared import output_path
from hirl_like.evaluation.arch_hint import guess_architecture
from hirl_like.evaluation.checkpoint_files import load_checkpoint_file
from hirl_like.evaluation.finetune_model import POOLS
from hirl_like.evaluation.finetune_recipe import FineTuneRecipe, TrainTransform, default_recipe, is_grey
from hirl_like.evaluation.semisup import check_fraction, class_balanced_subset, read_indices, subset_record
from hirl_like.registry import DATASETS


def label_fraction(text: str) -> float:
    """argparse type of ``--label_fraction``: a number in (0, 1]."""
    try:
        return check_fraction(float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err) if "label fraction" in str(err) else f"{text!r} is not a number") from None


def _crop_scale(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected two comma-separated numbers, e.g. 0.08,1") from None
    return lo, hi


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe flags; None means "the recipe's value" (ViT or ResNet, see the module docstring)."""
    add = parser.add_argument
    add("--epochs", type=int, default=None, help="fine-tuning epochs (ViT 100, ResNet 60)")
    add("--warmup_epochs", type=float, default=None, help="linear warm-up epochs (ViT 5, ResNet 0)")
    add("--lr", type=float, default=None, help="base lr per 256 images; used: lr x global batch / 256 (ViT 5e-4, ResNet 0.05)")
    add("--min_lr", type=float, default=None, help="end of the cosine (ViT 1e-6, ResNet 0)")
    add("--weight_decay", type=float, default=None, help="ViT 0.05, ResNet 0 (never on biases, norms, cls/pos tokens)")
    add("--layer_decay", type=float, default=None, help="ViT layer-wise lr decay (0.65; 1 = off)")
    add("--drop_path", type=float, default=None, help="ViT stochastic depth (0.1)")
    add("--mixup", type=float, default=None, help="mixup alpha (ViT 0.8; 0 = off)")
    add("--cutmix", type=float, default=None, help="cutmix alpha (ViT 1.0; 0 = off)")
    add("--smoothing", type=float, default=None, help="label smoothing (ViT 0.1)")
    add("--auto_augment", default=None, help="timm RandAugment spec (ViT rand-m9-mstd0.5-inc1); 'none' = off")
    add("--reprob", type=float, default=None, help="random erasing probability (ViT 0.25)")
    add("--crop_scale", type=_crop_scale, default=None, help="random resized crop scale 'min,max' (0.08,1; 0.5,1 below 96 px)")
    add("--hflip", type=float, default=None, help="flip probability (default: the pre-training config's transform.hflip, else 0.5)")
    add("--momentum", type=float, default=None, help="ResNet SGD momentum (0.9)")
    add("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="ResNet SGD Nesterov momentum (on)")
    add("--pool", default="cls", choices=POOLS, help="ViT feature under the head: the [CLS] token or the mean patch token")
    add("--num_classes", type=int, default=None, help="classes of the head (default: the data set's; must match it)")
    add("--label_fraction", type=label_fraction, default=None,
        help="semi-supervised: fine-tune on this class-balanced share of the training labels, in (0, 1] (e.g. 0.01, 0.1)")
    add("--label_indices", default=None, help="semi-supervised: reuse the subset of a semisup_<F>_indices.json file")
    add("--seed", type=int, default=0, help="head initialisation, data order, augmentations, label subset")
    add("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16: autocast on CUDA")


def recipe_from_args(args: argparse.Namespace, cfg: DictConfig, is_vit: bool, size: int) -> FineTuneRecipe:
    """The ViT or ResNet recipe at image size ``size``, the flags that were given applied."""
    if args.layer_decay is not None and args.layer_decay != 1 and not is_vit:
        raise ValueError("--layer_decay decays the lr over a ViT's blocks; the ResNet recipe has no layer decay (drop the flag).")
    if args.drop_path and not is_vit:
        raise ValueError("--drop_path is the ViT recipe's stochastic depth; the ResNet recipe has none (drop the flag).")
    hflip = args.hflip
    if hflip is None:
        transform = cfg.get("transform")
        hflip = transform.get("hflip") if transform is not None else None  # None: the recipe's 0.5
    base = default_recipe(is_vit, size)
    warmup = args.warmup_epochs
    if warmup is None and args.epochs is not None and args.epochs <= base.warmup_epochs:
        warmup = base.warmup_epochs / base.epochs * args.epochs  # a short run keeps the recipe's share of warm-up
    recipe = default_recipe(
        is_vit, size, hflip=hflip, epochs=args.epochs, warmup_epochs=warmup, base_lr=args.lr, min_lr=args.min_lr,
        weight_decay=args.weight_decay, drop_path=args.drop_path, mixup=args.mixup, cutmix=args.cutmix,
        label_smoothing=args.smoothing, re_prob=args.reprob, crop_scale=args.crop_scale, momentum=args.momentum,
        nesterov=args.nesterov,
    )
    # Flags that can turn a part off, which None cannot say to default_recipe: --layer_decay 1, --auto_augment none.
    if args.layer_decay is not None:
        recipe = replace(recipe, layer_decay=args.layer_decay if args.layer_decay != 1 else None)
    if args.auto_augment is not None:
        recipe = replace(recipe, auto_augment=None if args.auto_augment.lower() in ("", "none") else args.auto_augment)
    return recipe


def train_dataset(cfg: DictConfig, args: argparse.Namespace, recipe: FineTuneRecipe, size: int) -> tuple[Any, FineTuneRecipe]:
    """``cfg.data`` at ``--train_split`` with the recipe's training views (augmentations seeded by
    ``--seed``), and the recipe, marked ``grey`` when the images are."""
    data = dict(cfg.data)
    data["split"] = args.train_split
    dataset = DATASETS.build(data, transform=TrainTransform(recipe, size), tokenizer=None, seed=args.seed)
    if is_grey(dataset):
        recipe = replace(recipe, grey=True)
        dataset.transform = TrainTransform(recipe, size)
    return dataset, recipe


def _indices_path(args: argparse.Namespace, name: str) -> Path:
    """Where the label subset of report ``eval_<name>.json`` is written: beside it."""
    return output_path(args, name).parent / f"{name}_indices.json"


def label_subset(args: argparse.Namespace, cfg: DictConfig, labels: torch.Tensor) -> dict[str, Any] | None:
    """None (all labels), or {"name": report name semisup_<F>, "fraction", "indices", "path" of the
    indices file, "record" (its content), "new": whether it still has to be written}."""
    if args.label_fraction is None and args.label_indices is None:
        return None
    n = int(labels.numel())
    if args.label_indices is not None:
        record = read_indices(args.label_indices, split_size=n)
        if record.get("dataset") not in (None, str(cfg.data.name)):
            raise ValueError(f"{args.label_indices} indexes the {record['dataset']} data, not {cfg.data.name}: "
                             "draw a new subset with --label_fraction.")
        fraction = float(record.get("fraction") or len(record["indices"]) / n)
        indices = torch.tensor(record["indices"], dtype=torch.long)
        record = subset_record(indices, labels, fraction, int(record.get("seed", args.seed)),
                               **{k: record[k] for k in ("dataset", "split") if k in record})
        return {"name": f"semisup_{fraction:g}", "fraction": fraction, "indices": indices.tolist(),
                "path": Path(args.label_indices), "record": record, "new": False}
    fraction = args.label_fraction
    indices = class_balanced_subset(labels, fraction, seed=args.seed)
    record = subset_record(indices, labels, fraction, args.seed, dataset=str(cfg.data.name), split=args.train_split)
    name = f"semisup_{fraction:g}"
    return {"name": name, "fraction": fraction, "indices": indices.tolist(), "path": _indices_path(args, name),
            "record": record, "new": True}


def _arch_hint(args: argparse.Namespace, cfg: DictConfig) -> str:
    """A line naming the checkpoint's architecture and the --arch flag, or the generic advice."""
    vision = dict(cfg.pipeline.vision)
    ours = vision.get("arch", vision.get("name"))
    try:
        payload = load_checkpoint_file(args.pretrained)
        guess = guess_architecture(payload) or next(
            (g for v in payload.values() if isinstance(v, dict) and (g := guess_architecture(v))), None)
    except (OSError, ValueError):
        guess = None
    if guess is None:
        return (f"  hint: the checkpoint was saved from another architecture than the config's pipeline.vision "
                f"({ours}): pass --arch NAME (and pipeline.vision.* overrides) or the --config of the run that wrote it.")
    extra = " ".join(guess["overrides"])
    return (f"  hint: --pretrained holds {guess['text']}, but the config's pipeline.vision is {ours}: pass "
            f"--arch {guess['arch']}{' ' + extra if extra else ''} (or the --config of the run that wrote it).")


def backbones_or_arch_error(cfg: DictConfig, args: argparse.Namespace, load: Callable) -> Any:
    """``load(cfg, args)`` (the shared backbone loader); a checkpoint that does not fit the
    configured architecture gets a hint naming its architecture and the ``--arch`` flag."""
    try:
        return load(cfg, args)
    except ValueError as err:
        text = str(err)
        if "does not match" not in text and "none of the model's parameter names" not in text:
            raise
        raise ValueError(f"{text}\n{_arch_hint(args, cfg)}") from None
