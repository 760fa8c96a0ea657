"""k-means clustering of frozen CLS features (HIRL / ProtoCLIP protocol).

    python3 launch.py --launch eval_common/eval_clustering.py --pretrained OUT/main_vit_checkpoint.pth

Features of one split (``--split``, default val) are L2-normalised and clustered by faiss
k-means with k = the number of classes, keeping the best of ``--restarts`` initialisations
(lowest objective). The clusters are scored against the labels by NMI, AMI, ARI (scikit-learn)
and accuracy after Hungarian matching (scipy), all in %. Writes ``eval_clustering.json`` beside
the checkpoint. Every rank extracts its shard; rank 0 clusters the gathered features.
"""

from __future__ import annotations

import argparse

from common import eval_parser, features_for_split, load_pretrained_backbone, num_classes_of, run_script, start, write_report

from hirl_like.evaluation.clustering import cluster_metrics, kmeans
from hirl_like.evaluation.report import format_table


def main() -> int:
    parser = eval_parser(__doc__)
    # An alias of --test_split: clustering uses one split only.
    parser.add_argument("--split", dest="test_split", default=argparse.SUPPRESS, help="split to cluster (default: val)")
    parser.add_argument("--restarts", type=int, default=5, help="k-means initialisations; the lowest objective wins")
    parser.add_argument("--iterations", type=int, default=100, help="k-means iterations per initialisation")
    parser.add_argument("--num_clusters", type=int, default=None, help="k (default: the number of classes)")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed")
    args = parser.parse_args()
    if args.restarts < 1 or args.iterations < 1:
        parser.error("--restarts and --iterations must be >= 1")
    cfg, dist = start(args)
    model, source = load_pretrained_backbone(cfg, args)
    feats, labels, dataset = features_for_split(model, cfg, args.test_split, args, dist)
    if dist.rank == 0:
        num_classes = num_classes_of(dataset, labels)
        k = args.num_clusters or num_classes
        assignments = kmeans(feats, k, restarts=args.restarts, iterations=args.iterations, seed=args.seed)
        scores = cluster_metrics(labels, assignments)
        row = {"model": "pretrained", "split": args.test_split, "k": k, **scores}
        title = f"k-means clustering ({cfg.data.name} {args.test_split}, {len(labels)} images, {args.restarts} restarts)"
        print(format_table([row], ["model", "split", "k", "nmi", "ami", "ari", "acc"], title=title))
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
            "features": "L2-normalised CLS",
            "results": scores,
        })
    return 0


if __name__ == "__main__":
    run_script(main)
