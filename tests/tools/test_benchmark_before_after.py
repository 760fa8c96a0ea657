"""tools/benchmark_before_after.py: the earlier tree is unpacked whole, the table's ratios are
before / after, and the tokens cell shows what padding to the context computed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("benchmark_before_after", ROOT / "tools" / "benchmark_before_after.py")
before_after = importlib.util.module_from_spec(spec)
spec.loader.exec_module(before_after)


def test_unpack_gives_the_commits_own_files(tmp_path: Path) -> None:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    before_after.unpack("HEAD", tmp_path)
    committed = subprocess.run(["git", "-C", str(ROOT), "show", "HEAD:tools/benchmark.py"], capture_output=True, text=True).stdout
    assert (tmp_path / "tools" / "benchmark.py").read_text() == committed
    assert (tmp_path / "hirl_like" / "__init__.py").is_file()


def test_tokens_cell_counts_every_pass_at_the_context() -> None:
    r = {"text_passes": 3, "batch_size": 8, "text_context_length": 32, "text_real_tokens": 225, "text_computed_tokens": 384}
    assert before_after.tokens(r) == "225 / 384 (before: 768)"
    assert before_after.tokens({"batch_size": 8}) == "no text"


def test_table_ratios_are_before_over_after(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def fake(tree: Path, configs: list[str], batch_size: int, steps: int, output: Path) -> dict[str, dict]:
        slow = tree != before_after.ROOT  # the earlier tree: twice the time, 1.5x the memory
        return {c: {"step_time_median_s": (0.2 if slow else 0.1) * batch_size, "peak_memory_mb": 300.0 if slow else 200.0,
                    "mfu": 0.25 if slow else 0.5, "batch_size": batch_size} for c in configs}

    monkeypatch.setattr(before_after, "unpack", lambda commit, into: None)
    monkeypatch.setattr(before_after.shutil, "copytree", lambda *a, **k: None)
    monkeypatch.setattr(before_after, "benchmark", fake)
    monkeypatch.setattr(sys, "argv", ["x", "--configs", "a.yaml", "b.yaml", "--batch-sizes", "8,32"])
    assert before_after.main() == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| a ") or line.startswith("| b ")]
    assert len(rows) == 4 and rows[0].startswith("| a | 8 |") and rows[1].startswith("| a | 32 |")
    assert "| 1600.0 ms | 800.0 ms | 2.00x | 300 / 200 MiB (1.50x) | 25.0% / 50.0% | no text |" in rows[0]
