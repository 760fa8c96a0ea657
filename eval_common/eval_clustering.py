"""k-means clustering of frozen CLS features: NMI / AMI / ARI / Hungarian accuracy:

    python3 launch.py --launch eval_common/eval_clustering.py --pretrained OUT/main_vit_checkpoint.pth [--compare_random_init]
    python eval_common/eval_clustering.py --pretrained OUT/checkpoint.pth [key=value ...]

Thin script; the command lives in :mod:`hirl_like.cli.eval_clustering` (also the console script
``hirl-eval-clustering``); ``--help`` lists every flag.
"""

from hirl_like.cli.eval_clustering import main
from hirl_like.cli.eval_shared import run_eval

if __name__ == "__main__":
    run_eval(main)
