"""Linear probe on frozen features (DINOv2-style grid of heads trained at once).

    python3 launch.py --launch eval_common/eval_linear.py --pretrained OUT/main_vit_checkpoint.pth [--avgpool] [--compare_random_init]

Features: the CLS token of the last block, or with ``--avgpool`` the CLS token concatenated with
the average of the patch tokens (DINO's ``eval_linear.py --avgpool_patchtokens``, n_last_blocks = 1).
A ResNet backbone gives its pooled feature (the global average pool of its last feature map, as
MoCo's / SimSiam's linear protocol); ``--avgpool`` is an error there (no CLS token, nothing to add).
One linear head per learning rate of ``--lrs`` is trained at once (SGD, momentum 0.9, cosine
schedule, ``--epochs``). The learning rate is chosen on a stratified ``--val_fraction`` of the
TRAINING set, never on the test set; the chosen head is retrained on the whole training set and
scored once on the test split (``hirl_like.evaluation.linear_probe``). Writes
``eval_linear.json`` beside the checkpoint (``results``: the pre-trained backbone;
``random_init``: the same probe on the same architecture at random initialisation, with
``--compare_random_init``). Every rank extracts its shard; rank 0 trains the heads.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from hirl_like.cli.eval_shared import (
    PRETRAINED,
    RANDOM_INIT,
    add_random_init_argument,
    backbones_to_evaluate,
    eval_entry,
    eval_parser,
    features_for_split,
    num_classes_of,
    run_eval,
    start,
    write_report,
)
from hirl_like.evaluation.features import has_tokens, token_features
from hirl_like.evaluation.linear_probe import linear_probe
from hirl_like.evaluation.report import format_table

DEFAULT_LRS = inspect.signature(linear_probe).parameters["learning_rates"].default  # the library's grid


def _summary(result: dict) -> dict:
    """The JSON record of one probe."""
    return {
        "best_lr": result["best_lr"],
        "test_top1": result["test_top1"],
        "test_top5": result["test_top5"],
        "val_top1": {str(lr): v for lr, v in result["val_top1"].items()},
        "fit_size": result["train_size"],
        "val_size": result["val_size"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = eval_parser(__doc__)
    parser.add_argument("--avgpool", action="store_true",
                        help="ViT: concatenate the average-pooled patch tokens to CLS (an error for a ResNet, "
                             "whose feature already is its global average pool)")
    parser.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in DEFAULT_LRS), help="comma-separated learning rates, one head each")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--head_batch_size", type=int, default=256, help="minibatch of the linear heads")
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share of the train split held out to pick the lr")
    parser.add_argument("--no_standardize", action="store_true", help="train on raw features (DINOv2) instead of standardised ones")
    parser.add_argument("--seed", type=int, default=0, help="head initialisation, minibatch order and held-out split")
    add_random_init_argument(parser)
    args = parser.parse_args(argv)
    try:
        lrs = [float(lr) for lr in args.lrs.split(",") if lr.strip()]
    except ValueError:
        parser.error(f"--lrs {args.lrs!r}: expected comma-separated numbers, e.g. 1e-3,1e-2,1e-1")
    if not lrs:
        parser.error("--lrs is empty")
    cfg, dist = start(args)
    models, source = backbones_to_evaluate(cfg, args)
    forwards = [token_features(backbone, avgpool=args.avgpool) for _, backbone in models]  # before any extraction
    results, rows = {}, []
    for (label, backbone), forward in zip(models, forwards):
        train_x, train_y, train_set = features_for_split(backbone, cfg, args.train_split, args, dist, forward=forward)
        test_x, test_y, _ = features_for_split(backbone, cfg, args.test_split, args, dist, forward=forward)
        if dist.rank != 0:
            continue
        num_classes = num_classes_of(train_set, train_y)
        result = results[label] = linear_probe(
            train_x, train_y, test_x, test_y, num_classes,
            learning_rates=lrs, epochs=args.epochs, batch_size=args.head_batch_size,
            weight_decay=args.weight_decay, val_fraction=args.val_fraction, seed=args.seed,
            device=dist.device, standardize=not args.no_standardize,
        )
        for lr in lrs:
            chosen = lr == result["best_lr"]
            rows.append({
                "model": label,
                "lr": f"{lr:g}",
                "val_top1": result["val_top1"].get(lr),
                "chosen": "*" if chosen else "",
                "test_top1": result["test_top1"] if chosen else None,
                "test_top5": result["test_top5"] if chosen else None,
            })
    if dist.rank == 0:
        pooling = ("cls+avgpool" if args.avgpool else "cls") if has_tokens(models[0][1]) else "avgpool"
        fitted = results[PRETRAINED]
        title = (
            f"linear probe ({cfg.data.name}, {pooling} {train_x.shape[1]}-d, {fitted['train_size']} fit / "
            f"{fitted['val_size']} held-out train / {len(test_y)} test, {args.epochs} epochs)"
        )
        print(format_table(rows, ["model", "lr", "val_top1", "chosen", "test_top1", "test_top5"], title=title))
        write_report(args, "linear", {
            "checkpoint": source,
            "dataset": str(cfg.data.name),
            "train_split": args.train_split,
            "test_split": args.test_split,
            "train_size": len(train_y),
            "test_size": len(test_y),
            "num_classes": num_classes,
            "features": pooling,
            "feature_dim": int(train_x.shape[1]),
            "learning_rates": lrs,
            "epochs": args.epochs,
            "head_batch_size": args.head_batch_size,
            "weight_decay": args.weight_decay,
            "val_fraction": args.val_fraction,
            "standardize": not args.no_standardize,
            "seed": args.seed,
            "results": _summary(fitted),
            **({"random_init": _summary(results[RANDOM_INIT])} if RANDOM_INIT in results else {}),
        })
    return 0


entry = eval_entry(main)

if __name__ == "__main__":
    run_eval(main)
