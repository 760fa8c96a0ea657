"""Image <-> text retrieval recall@k on a captioned split:

    python3 launch.py --launch eval_common/eval_retrieval.py --pretrained OUT/main_vit_checkpoint.pth [--match class] [--captions_per_image 2]
    python eval_common/eval_retrieval.py --pretrained OUT/checkpoint.pth [key=value ...]

Thin script; the command lives in :mod:`hirl_like.cli.eval_retrieval` (also the console script
``hirl-eval-retrieval``); ``--help`` lists every flag.
"""

from hirl_like.cli.eval_retrieval import main
from hirl_like.cli.eval_shared import run_eval

if __name__ == "__main__":
    run_eval(main)
