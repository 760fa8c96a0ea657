"""Between-image / within-image variance of a randomly initialised backbone's [CLS] over augmented
views: ``python tools/view_invariance.py -c CONFIG [key=value ...] [--images 128] [--views 8] [--crop 0]``.

A ratio well below 1 means the config's views differ more than its images do at initialisation,
where self-distillation's [CLS] term tends to collapse (README, "Views on digits"). Batch-free and
quick: one forward per view, on the config's own data and transform.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hirl_like.cli.common import config_parser, console_entry, run_cleanly

from hirl_like.config import load_config
from hirl_like.data.build import build_train_dataset
from hirl_like.evaluation.view_invariance import backbone_view_features, view_invariance
from hirl_like.registry import PIPELINES


def main(argv: Sequence[str] | None = None) -> int:
    parser = config_parser(__doc__)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--views", type=int, default=8, help="augmented views drawn per image")
    parser.add_argument("--crop", type=int, default=0, help="which global crop's recipe (0: crop 1)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(int(cfg.seed))
    pipeline = PIPELINES.build(cfg.pipeline).eval()
    dataset = build_train_dataset(cfg, False)
    features = backbone_view_features(pipeline.backbones.student_vision, dataset, args.images, args.views, args.crop)
    result = view_invariance(features)
    print(f"{args.config}: {args.images} images x {args.views} views of global crop {args.crop}, "
          f"random-init [CLS] (L2-normalised)")
    print(f"between images {result.between:.4f}, within an image {result.within:.4f}, ratio {result.ratio:.3f}")
    return 0


entry = console_entry(main)

if __name__ == "__main__":
    run_cleanly(main)
