"""Linear dense probe (semantic segmentation) on frozen patch tokens, over canvases of real items:

    python eval_common/eval_segmentation.py --pretrained OUT/main_vit_checkpoint.pth [--compare_random_init] [key=value ...]
    python3 launch.py --launch eval_common/eval_segmentation.py --pretrained OUT/checkpoint.pth

Thin script; the command lives in :mod:`hirl_like.cli.eval_segmentation` (also the console script
``hirl-eval-segmentation``); ``--help`` lists every flag.
"""

from hirl_like.cli.eval_segmentation import main
from hirl_like.cli.eval_shared import run_eval

if __name__ == "__main__":
    run_eval(main)
