"""Command-line entry points: each module holds one command's ``main(argv) -> int``.

The scripts under ``tools/`` and ``eval_common/`` and the console scripts that ``pip install``
creates (``hirl-train``, ``hirl-eval-knn``, ...; see pyproject.toml) all call these functions,
so a command behaves the same however it is started.
"""
