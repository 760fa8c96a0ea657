"""Fine-tuning (and semi-supervised fine-tuning on a label fraction) of the pre-trained backbone:

    python3 launch.py --launch eval_common/eval_finetune.py --pretrained OUT/main_vit_checkpoint.pth [--compare_random_init]
    python eval_common/eval_finetune.py --pretrained OUT/main_vit_checkpoint.pth --label_fraction 0.01 [key=value ...]

Thin script; the command lives in :mod:`hirl_like.cli.eval_finetune` (also the console script
``hirl-eval-finetune`` once pyproject.toml lists it); ``--help`` lists every flag.
"""

from hirl_like.cli.eval_finetune import main
from hirl_like.cli.eval_shared import run_eval

if __name__ == "__main__":
    run_eval(main)
