"""k-means clustering of frozen CLS features (a ResNet: its pooled features) (HIRL / ProtoCLIP protocol).

    python3 launch.py --launch eval_common/eval_clustering.py --pretrained OUT/main_vit_checkpoint.pth [--compare_random_init]

Features of one split (``--split``, default val) are L2-normalised and clustered by faiss
k-means with k = the number of classes, keeping the best of ``--restarts`` initialisations
(lowest objective). The clusters are scored against the labels by NMI, AMI, ARI (scikit-learn)
and accuracy after Hungarian matching (scipy), all in %. Writes ``eval_clustering.json`` beside
the checkpoint (``results``: the pre-trained backbone; ``random_init``: the reference row of
``--compare_random_init``, the same architecture at random initialisation). Every rank extracts
its shard; rank 0 clusters the gathered features.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from hirl_like.cli.eval_shared import (
    PRETRAINED,
    RANDOM_INIT,
    add_random_init_argument,
    backbones_to_evaluate,
    eval_entry,
    eval_parser,
    feature_name,
    features_for_split,
    num_classes_of,
    run_eval,
    start,
    write_report,
)
from hirl_like.evaluation.clustering import cluster_metrics, kmeans
from hirl_like.evaluation.report import format_table


def main(argv: Sequence[str] | None = None) -> int:
    parser = eval_parser(__doc__)
    # An alias of --test_split: clustering uses one split only.
    parser.add_argument("--split", dest="test_split", default=argparse.SUPPRESS, help="split to cluster (default: val)")
    parser.add_argument("--restarts", type=int, default=5, help="k-means initialisations; the lowest objective wins")
    parser.add_argument("--iterations", type=int, default=100, help="k-means iterations per initialisation")
    parser.add_argument("--num_clusters", type=int, default=None, help="k (default: the number of classes)")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed")
    add_random_init_argument(parser)
    args = parser.parse_args(argv)
    if args.restarts < 1 or args.iterations < 1:
        parser.error("--restarts and --iterations must be >= 1")
    cfg, dist = start(args)
    models, source = backbones_to_evaluate(cfg, args)
    scores, rows = {}, []
    for label, backbone in models:
        feats, labels, dataset = features_for_split(backbone, cfg, args.test_split, args, dist)
        if dist.rank == 0:
            num_classes = num_classes_of(dataset, labels)
            k = args.num_clusters or num_classes
            assignments = kmeans(feats, k, restarts=args.restarts, iterations=args.iterations, seed=args.seed)
            scores[label] = cluster_metrics(labels, assignments)
            rows.append({"model": label, "split": args.test_split, "k": k, **scores[label]})
    if dist.rank == 0:
        title = f"k-means clustering ({cfg.data.name} {args.test_split}, {len(labels)} images, {args.restarts} restarts)"
        print(format_table(rows, ["model", "split", "k", "nmi", "ami", "ari", "acc"], title=title))
        write_report(args, "clustering", {
            "checkpoint": source,
            "dataset": str(cfg.data.name),
            "split": args.test_split,
            "size": len(labels),
            "num_classes": num_classes,
            "num_clusters": k,
            "restarts": args.restarts,
            "iterations": args.iterations,
            "seed": args.seed,
            "features": f"L2-normalised {feature_name(models[0][1])}",
            "results": scores[PRETRAINED],
            **({"random_init": scores[RANDOM_INIT]} if RANDOM_INIT in scores else {}),
        })
    return 0


entry = eval_entry(main)

if __name__ == "__main__":
    run_eval(main)
