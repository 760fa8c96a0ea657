"""Linear probe on frozen features, the lr chosen on held-out training data:

    python3 launch.py --launch eval_common/eval_linear.py --pretrained OUT/main_vit_checkpoint.pth [--avgpool] [--compare_random_init]
    python eval_common/eval_linear.py --pretrained OUT/checkpoint.pth [key=value ...]

Thin script; the command lives in :mod:`hirl_like.cli.eval_linear` (also the console script
``hirl-eval-linear``); ``--help`` lists every flag.
"""

from hirl_like.cli.eval_linear import main
from hirl_like.cli.eval_shared import run_eval

if __name__ == "__main__":
    run_eval(main)
