"""Weighted k-NN classification of frozen CLS features (DINO's protocol).

    python3 launch.py --launch eval_common/eval_knn.py --pretrained OUT/main_vit_checkpoint.pth

Cosine similarity of L2-normalised features, top-k neighbours on faiss, votes weighted by
exp(sim / T) with T = 0.07, k in {10, 20, 100, 200}; top-1 and top-5 accuracy. Writes
``eval_knn.json`` beside the checkpoint. ``--compare_random_init`` adds the same architecture
at random initialisation as a reference row.
"""

from __future__ import annotations

from common import (
    build_backbone,
    eval_parser,
    features_for_split,
    load_pretrained_backbone,
    num_classes_of,
    run_script,
    start,
    write_report,
)

from hirl_like.evaluation.knn import knn_classify
from hirl_like.evaluation.report import format_table


def main() -> int:
    parser = eval_parser(__doc__)
    parser.add_argument("--ks", default="10,20,100,200", help="comma-separated k values")
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--compare_random_init", action="store_true", help="also evaluate the same ViT at random init")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",") if k]
    cfg, dist = start(args)
    model, source = load_pretrained_backbone(cfg, args)
    models = [("pretrained", model)]
    if args.compare_random_init:
        models.append(("random init", build_backbone(cfg)))
    rows, results = [], {}
    for label, backbone in models:
        train_x, train_y, train_set = features_for_split(backbone, cfg, args.train_split, args, dist)
        test_x, test_y, _ = features_for_split(backbone, cfg, args.test_split, args, dist)
        scores = knn_classify(train_x, train_y, test_x, test_y, num_classes_of(train_set, train_y), ks=ks, temperature=args.temperature)
        results[label] = {str(k): v for k, v in scores.items()}
        for k, v in scores.items():
            rows.append({"model": label, "k": k, "top1": v["top1"], "top5": v["top5"]})
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


if __name__ == "__main__":
    run_script(main)
