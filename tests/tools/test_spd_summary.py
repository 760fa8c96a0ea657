"""tools/spd_summary.py reads the SPD accuracy of the windows that had clusters, first and last three."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location("spd_summary", Path(__file__).resolve().parents[2] / "tools/spd_summary.py")
spd_summary = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(spd_summary)
summarise = spd_summary.summarise


def test_means_of_the_first_and_last_three_active_windows(tmp_path):
    run = tmp_path / "HIRL-X"
    run.mkdir()
    rows = [{"type": "train", "semantic/active": 0.0, "semantic/spd_accuracy": 0.9, "semantic_loss": 0.0}]
    rows += [{"type": "train", "semantic/active": 1.0, "semantic/spd_accuracy": a, "semantic_loss": 1.0 - a}
             for a in (0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8)]
    rows.append({"type": "clustering", "epoch": 1})
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert summarise(run) == "HIRL-X: spd_accuracy 20.0% -> 70.0%, semantic_loss 0.800 -> 0.300"
    (run / "log.jsonl").write_text(json.dumps(rows[0]))
    assert summarise(run) is None
