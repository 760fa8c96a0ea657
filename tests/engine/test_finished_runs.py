"""Finished means finished: a kill at any stage of the final save leaves a run whose rerun ends
with the exports of an uninterrupted run; a finished run with missing or older exports re-exports
them; a rerun under another schedule is refused unless allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import hirl_like.engine.checkpoint as checkpoint_module
from hirl_like.config import load_config
from hirl_like.engine.dist_setup import init_distributed
from hirl_like.engine.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
CLIP = ROOT / "configs/quickstart/clip_vit_tiny_digits.yaml"
# one epoch of 11 iterations: a single save, the final one
FAST = ["batch_size=128", "epochs=1", "num_workers=0", "progress_bar=false", "tensorboard=false",
        "pipeline.vision.depth=1", "pipeline.text.layers=1"]
EXPORTS = ("main_vit_checkpoint.pth", "main_text_checkpoint.pth")


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way catches it."""


def train(out: Path, *overrides: str) -> dict:
    cfg = load_config(CLIP, [f"output_dir={out}", *FAST, *overrides])
    return Trainer(cfg, init_distributed(device="cpu")).fit()


def exports(out: Path) -> dict[str, object]:
    return {name: torch.load(out / name, weights_only=True) for name in EXPORTS}


def assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    else:
        assert a == b


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("uninterrupted")
    train(out)
    return exports(out)


# The final save writes, in order: vision export, text export, checkpoint; each one as
# torch.save to a temp file, then os.replace. A kill before a write, after it, or after a rename.
STAGES = [(call, when) for call in range(3) for when in ("before write", "after write", "after rename")]


@pytest.mark.slow
@pytest.mark.parametrize("call,when", STAGES, ids=[f"file{c}-{w.replace(' ', '_')}" for c, w in STAGES])
def test_a_kill_at_any_save_stage_reruns_to_the_uninterrupted_exports(call, when, tmp_path, monkeypatch, reference):
    counts = {"save": 0, "replace": 0}
    real_save, real_replace = torch.save, os.replace

    def save(obj, f, *args, **kwargs):
        if when == "before write" and counts["save"] == call:
            raise Killed
        counts["save"] += 1
        return real_save(obj, f, *args, **kwargs)

    def replace(src, dst):
        if when == "after write" and counts["replace"] == call:
            raise Killed
        real_replace(src, dst)
        counts["replace"] += 1
        if when == "after rename" and counts["replace"] == call + 1:
            raise Killed

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    with pytest.raises(Killed):
        train(tmp_path)
    monkeypatch.undo()
    summary = train(tmp_path)  # the rerun: same command
    assert summary["iterations"] == 11
    got = exports(tmp_path)
    for name in EXPORTS:
        assert_same(got[name], reference[name])


def test_a_finished_run_rewrites_missing_or_older_exports(tmp_path, reference, capsys):
    train(tmp_path)
    (tmp_path / "main_text_checkpoint.pth").unlink()
    vit = tmp_path / "main_vit_checkpoint.pth"
    old = (tmp_path / "checkpoint.pth").stat().st_mtime_ns - 10**9
    os.utime(vit, ns=(old, old))
    train(tmp_path)
    assert "re-exported main_vit_checkpoint.pth, main_text_checkpoint.pth" in capsys.readouterr().out
    got = exports(tmp_path)
    for name in EXPORTS:
        assert_same(got[name], reference[name])


def test_a_changed_schedule_is_refused_unless_allowed(tmp_path):
    train(tmp_path)
    with pytest.raises(ValueError, match=r"epochs: 1 -> 2.*resume.allow_changes=true"):
        train(tmp_path, "epochs=2")
    with pytest.raises(ValueError, match=r"optimizer.lr"):
        train(tmp_path, "optimizer.lr=0.01")
    assert train(tmp_path, "epochs=2", "resume.allow_changes=true")["iterations"] == 22
    assert train(tmp_path, "epochs=2", "max_iterations=30")["iterations"] == 22  # max_iterations is no schedule key
