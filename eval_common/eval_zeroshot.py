"""CLIP zero-shot classification with prompt ensembling:

    python3 launch.py --launch eval_common/eval_zeroshot.py --pretrained OUT/main_vit_checkpoint.pth [--text_pretrained OUT/main_text_checkpoint.pth]
    python eval_common/eval_zeroshot.py --pretrained OUT/checkpoint.pth [key=value ...]

Thin script; the command lives in :mod:`hirl_like.cli.eval_zeroshot` (also the console script
``hirl-eval-zeroshot``); ``--help`` lists every flag.
"""

from hirl_like.cli.eval_zeroshot import main
from hirl_like.cli.eval_shared import run_eval

if __name__ == "__main__":
    run_eval(main)
