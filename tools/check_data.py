"""Check a data set before training: ``python tools/check_data.py -c CONFIG [key=value ...]``.

Thin script; the command lives in :mod:`hirl_like.cli.check_data` (its docstring says what it prints).
"""

from hirl_like.cli.common import run_cleanly
from hirl_like.cli.check_data import main

if __name__ == "__main__":
    run_cleanly(main)
