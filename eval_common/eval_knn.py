"""Weighted k-NN classification of frozen CLS features (DINO's protocol):

    python3 launch.py --launch eval_common/eval_knn.py --pretrained OUT/main_vit_checkpoint.pth [--compare_random_init]
    python eval_common/eval_knn.py --pretrained OUT/checkpoint.pth [key=value ...]

Thin script; the command lives in :mod:`hirl_like.cli.eval_knn` (also the console script
``hirl-eval-knn``); ``--help`` lists every flag.
"""

from hirl_like.cli.eval_knn import main
from hirl_like.cli.eval_shared import run_eval

if __name__ == "__main__":
    run_eval(main)
