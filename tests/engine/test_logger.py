"""The console progress: sparse plain lines when the output is not a terminal, a bar that does not
redraw on every iteration when it is; and a redirected training run's line count."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from hirl_like.engine.logger import ProgressBar, RunningMeans, is_terminal

ROOT = Path(__file__).resolve().parents[2]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_redirected_bar_prints_one_line_per_log_interval():
    out = io.StringIO()
    bar = ProgressBar(total=121, log_interval=10, stream=out)
    assert not bar.terminal
    for i in range(121):
        bar.update({"loss": f"{1 / (i + 1):.4f}", "epoch": f"{i / 60:.2f}"})
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 13  # iterations 10, 20, ..., 120 and the last one
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("train:") and " 10/121 " in lines[0] and "loss=0.1000" in lines[0]
    assert " 121/121 " in lines[-1] and "epoch=2.00" in lines[-1]


def test_a_resumed_run_counts_from_its_start():
    out = io.StringIO()
    bar = ProgressBar(total=50, initial=40, log_interval=5, stream=out)
    for _ in range(10):
        bar.update()  # no postfix: none shown
    lines = out.getvalue().splitlines()
    assert [ln.split()[2] for ln in lines] == ["45/50", "50/50"]


def test_on_a_terminal_the_postfix_does_not_force_a_redraw_per_iteration():
    out = FakeTerminal()
    bar = ProgressBar(total=200, log_interval=10, stream=out, mininterval=60)
    assert bar.terminal and is_terminal(out)
    for i in range(200):
        bar.update({"loss": f"{i:.4f}"})
    bar.close()
    redraws = out.getvalue().count("\r")
    assert redraws < 10, redraws  # tqdm + set_postfix(refresh=True) would redraw about 400 times
    assert "200/200" in out.getvalue()


def test_arguments_and_streams():
    with pytest.raises(ValueError, match="log_interval"):
        ProgressBar(total=3, log_interval=0, stream=io.StringIO())
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed)
    means = RunningMeans()
    means.update({"a": 1.0, "b": float("nan")})
    assert means.means() == {"a": 1.0}


@pytest.mark.slow
def test_a_redirected_training_run_prints_about_iterations_over_log_interval_lines(tmp_path):
    """Needs the trainer to draw its bar with ProgressBar (hirl_like/engine/trainer.py)."""
    args = [
        sys.executable, "tools/train.py", "-c", "configs/quickstart/clip_vit_tiny_digits.yaml",
        f"output_dir={tmp_path}", "max_iterations=40", "log_interval=10", "num_workers=0", "tensorboard=false",
        "pipeline.vision.depth=1", "pipeline.text.layers=1", "batch_size=16",
    ]  # fmt: skip
    r = subprocess.run(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    progress = [ln for part in r.stderr.split("\r") for ln in part.splitlines() if ln.startswith("train:")]
    assert 4 <= len(progress) <= 6, r.stderr[-2000:]  # 40 iterations / 10, not one or two per iteration
