"""Print the fully resolved config: ``python tools/print_config.py -c FILE [key=value ...]``.

Thin script; the command lives in :mod:`hirl_like.cli.print_config` (also installed as a console script).
"""

from hirl_like.cli.common import run_cleanly
from hirl_like.cli.print_config import main

if __name__ == "__main__":
    run_cleanly(main)
