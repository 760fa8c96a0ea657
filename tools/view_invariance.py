"""Between-image / within-image variance of a randomly initialised backbone's [CLS] over augmented
views: ``python tools/view_invariance.py -c CONFIG [key=value ...] [--images 128] [--views 8] [--crop 0]``.

Thin script; the command lives in :mod:`hirl_like.cli.view_invariance` (also installed as a console script).
"""

from hirl_like.cli.common import run_cleanly
from hirl_like.cli.view_invariance import main

if __name__ == "__main__":
    run_cleanly(main)
