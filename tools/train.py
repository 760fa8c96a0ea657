"""Pre-train a model: ``python3 launch.py --launch tools/train.py -c CONFIG [key=value ...]``.

Thin script; the command lives in :mod:`hirl_like.cli.train` (also installed as a console script).
"""

from hirl_like.cli.common import run_cleanly
from hirl_like.cli.train import main

if __name__ == "__main__":
    run_cleanly(main)
