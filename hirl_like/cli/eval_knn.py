"""Weighted k-NN classification of frozen CLS features (a ResNet: its pooled features) (DINO's protocol).

    python3 launch.py --launch eval_common/eval_knn.py --pretrained OUT/main_vit_checkpoint.pth [--compare_random_init]

Cosine similarity of L2-normalised features, top-k neighbours on faiss, votes weighted by
exp(sim / T) with T = 0.07, k in {10, 20, 100, 200}; top-1 and top-5 accuracy. Writes
``eval_knn.json`` beside the checkpoint. ``--compare_random_init`` adds the same architecture
at random initialisation as a reference row.
"""

from __future__ import annotations

from collections.abc import Sequence

from hirl_like.cli.eval_shared import (
    add_random_init_argument,
    backbones_to_evaluate,
    eval_entry,
    eval_parser,
    features_for_split,
    num_classes_of,
    parse_ks,
    run_eval,
    start,
    write_report,
)
from hirl_like.evaluation.knn import knn_classify
from hirl_like.evaluation.report import format_table


def main(argv: Sequence[str] | None = None) -> int:
    parser = eval_parser(__doc__)
    parser.add_argument("--ks", default="10,20,100,200", help="comma-separated k values")
    parser.add_argument("--temperature", type=float, default=0.07)
    add_random_init_argument(parser)
    args = parser.parse_args(argv)
    ks = parse_ks(parser, args.ks)
    cfg, dist = start(args)
    models, source = backbones_to_evaluate(cfg, args)
    rows, results = [], {}
    for label, backbone in models:
        train_x, train_y, train_set = features_for_split(backbone, cfg, args.train_split, args, dist)
        test_x, test_y, _ = features_for_split(backbone, cfg, args.test_split, args, dist)
        scores = knn_classify(train_x, train_y, test_x, test_y, num_classes_of(train_set, train_y), ks=ks, temperature=args.temperature)
        results[label] = {str(k): v for k, v in scores.items()}
        rows += [{"model": label, "k": k, "top1": v["top1"], "top5": v["top5"]} for k, v in scores.items()]
    if dist.rank == 0:
        title = f"k-NN ({cfg.data.name}, {len(train_y)} train / {len(test_y)} test, T={args.temperature})"
        print(format_table(rows, ["model", "k", "top1", "top5"], title=title))
        write_report(args, "knn", {
            "checkpoint": source,
            "dataset": str(cfg.data.name),
            "train_split": args.train_split,
            "test_split": args.test_split,
            "train_size": len(train_y),
            "test_size": len(test_y),
            "temperature": args.temperature,
            "ks": ks,
            "results": results,
        })
    return 0


entry = eval_entry(main)

if __name__ == "__main__":
    run_eval(main)
