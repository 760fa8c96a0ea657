"""The trainer's loaders (issue 18 item 5): workers that persist across epochs give the weights of
a run that loads in the main process, across an epoch boundary and through a mid-epoch resume."""

from __future__ import annotations

from tests.engine.test_trainer import CLIP, FAST, assert_same_weights, train

# 64 per batch: 22 iterations per epoch of the 1,437 training digits; 24 crosses into epoch 2
OVERRIDES = [*FAST, "batch_size=64"]


def test_persistent_workers_across_epochs_and_resume_give_the_same_weights(tmp_path):
    train(CLIP, tmp_path / "main_process", *OVERRIDES, "max_iterations=24")
    train(CLIP, tmp_path / "workers", *OVERRIDES, "num_workers=2", "max_iterations=24")
    assert_same_weights(tmp_path / "main_process", tmp_path / "workers")
    train(CLIP, tmp_path / "resumed", *OVERRIDES, "num_workers=2", "max_iterations=20")  # mid-epoch 1
    summary = train(CLIP, tmp_path / "resumed", *OVERRIDES, "num_workers=2", "max_iterations=24")
    assert summary["iterations"] == 24
    assert_same_weights(tmp_path / "main_process", tmp_path / "resumed")
