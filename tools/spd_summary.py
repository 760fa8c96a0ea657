"""Semantic path discrimination at the start and the end of each HIRL run of a comparison.

    python tools/spd_summary.py output/compare/hirl_fashion_mnist

For every ``HIRL-*`` folder, the mean of ``semantic/spd_accuracy`` (the share of images whose own
path of prototypes scores above all their sampled negative paths; chance is about
1 / (num_neg_path + 1)) and of ``semantic_loss`` over the first and the last three logged windows
that had clusters, from the run's ``log.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def summarise(run: Path) -> str | None:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    active = [r for r in records if r["type"] == "train" and r.get("semantic/active") == 1]
    if not active:
        return None

    def mean(rows: list[dict], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    first, last = active[:3], active[-3:]
    return (
        f"{run.name}: spd_accuracy {100 * mean(first, 'semantic/spd_accuracy'):.1f}% -> "
        f"{100 * mean(last, 'semantic/spd_accuracy'):.1f}%, semantic_loss {mean(first, 'semantic_loss'):.3f} -> "
        f"{mean(last, 'semantic_loss'):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison", type=Path, help="a comparison's output_dir")
    for run in sorted(parser.parse_args().comparison.glob("HIRL-*")):
        if (line := summarise(run)) is not None:
            print(line)


if __name__ == "__main__":
    main()
