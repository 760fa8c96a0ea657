"""Checkpoint writes off the training path (``checkpoint_async``): a background write holds exactly
what a synchronous save would have written, taken at save time; one write in flight at a time; a
crash before the rename keeps the previous checkpoint; a write error reaches the training thread."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import hirl_like.engine.checkpoint as checkpoint_module
import hirl_like.engine.trainer as trainer_module
from hirl_like.config import load_config
from hirl_like.engine.checkpoint import (
    CheckpointWriteError,
    CheckpointWriter,
    load_checkpoint,
    remove_stale_temp_files,
    save_atomic,
    snapshot_to_cpu,
)
from hirl_like.engine.dist_setup import init_distributed
from hirl_like.engine.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
CLIP = ROOT / "configs/quickstart/clip_vit_tiny_digits.yaml"
FAST = ["batch_size=128", "epochs=1", "num_workers=0", "progress_bar=false", "tensorboard=false",
        "pipeline.vision.depth=1", "pipeline.text.layers=1"]
FILES_PER_SAVE = ["main_vit_checkpoint.pth", "main_text_checkpoint.pth", "checkpoint.pth"]


def trainer(out: Path, *overrides: str) -> Trainer:
    return Trainer(load_config(CLIP, [f"output_dir={out}", *FAST, *overrides]), init_distributed(device="cpu"))


def training_state() -> dict:
    """A checkpoint-shaped payload: model with tied weights, optimizer state, a view, plain values."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    model[1].weight = model[0].weight  # one storage under two keys
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 6)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "view": torch.arange(10.0)[2:5],
            "iteration": 7, "rng": checkpoint_module.capture_rng_state(), "config": {"lr": 1e-3, "betas": [0.9, 0.98]}}


def file_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def assert_same(a: object, b: object, where: str = "") -> None:
    """Equal structure and values; tensors equal in dtype, shape and every element."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


class Gate:
    """A fake save that blocks until released and records how many writes overlap."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.lock = threading.Lock()
        self.active = self.max_active = 0
        self.written: list[str] = []

    def __call__(self, obj, path) -> None:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.started.set()
        self.release.wait(timeout=30)
        save_atomic(obj, path)
        with self.lock:
            self.written.append(Path(path).name)
            self.active -= 1


# ----------------------------------------------------------------------------------------------
# the written file
# ----------------------------------------------------------------------------------------------


def test_background_write_equals_a_synchronous_save(tmp_path):
    state = training_state()
    save_atomic(state, tmp_path / "sync.pth")
    with CheckpointWriter(asynchronous=True) as writer:
        writer.submit([(state, tmp_path / "async.pth")])
    sync, background = load_checkpoint(tmp_path / "sync.pth"), load_checkpoint(tmp_path / "async.pth")
    assert_same(sync, background)
    # the snapshot keeps torch.save's storage layout (tied weights, views): the very same bytes
    assert (tmp_path / "async.pth").read_bytes() == (tmp_path / "sync.pth").read_bytes()
    assert background["model"]["0.weight"].data_ptr() == background["model"]["1.weight"].data_ptr()


def test_snapshot_shares_nothing_and_keeps_types(tmp_path):
    state = training_state()
    snapshot = snapshot_to_cpu(state)
    assert file_bytes(snapshot) == file_bytes(state)
    assert type(snapshot["model"]) is type(state["model"]) and snapshot["model"]._metadata == state["model"]._metadata
    originals = {t.untyped_storage().data_ptr() for t in state["model"].values()}
    assert not originals & {t.untyped_storage().data_ptr() for t in snapshot["model"].values()}


def test_trainer_async_and_sync_runs_write_the_same_files(tmp_path):
    """Saves every iteration (each save waits for the previous one) while training goes on."""
    outs = {mode: tmp_path / mode for mode in ("async", "sync")}
    for mode, out in outs.items():
        run = trainer(out, "max_iterations=3", "checkpoint_interval=1", f"checkpoint_async={str(mode == 'async').lower()}")
        assert run.checkpoint_writer.asynchronous is (mode == "async")
        assert run.fit()["iterations"] == 3
    for name in FILES_PER_SAVE:
        a, s = (torch.load(outs[m] / name, map_location="cpu", weights_only=True) for m in ("async", "sync"))
        if name == "checkpoint.pth":
            for state in (a, s):  # the only intended differences: where and how it was written
                del state["config"]["output_dir"], state["config"]["checkpoint_async"]
            assert a["iteration"] == 3
        assert_same(a, s, name)
    assert not list(outs["async"].glob(".*.tmp.*"))


# ----------------------------------------------------------------------------------------------
# one write in flight
# ----------------------------------------------------------------------------------------------


def test_the_next_save_waits_for_the_write_in_flight(tmp_path):
    gate = Gate()
    writer = CheckpointWriter(asynchronous=True)
    writer.submit([({"a": torch.ones(3)}, tmp_path / "first.pth")], save=gate)
    assert gate.started.wait(timeout=30) and writer.busy
    second = threading.Thread(target=writer.submit, args=([({"b": torch.zeros(3)}, tmp_path / "second.pth")],),
                              kwargs={"save": gate})
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive(), "the second save returned while the first write was still in flight"
    assert gate.written == [] and gate.active == 1
    gate.release.set()
    second.join(timeout=30)
    assert not second.is_alive()
    writer.close()
    assert gate.written == ["first.pth", "second.pth"] and gate.max_active == 1
    assert torch.equal(load_checkpoint(tmp_path / "second.pth")["b"], torch.zeros(3))


def test_trainer_writes_one_save_at_a_time_in_order_and_waits_before_returning(tmp_path, monkeypatch):
    gate = Gate()
    gate.release.set()  # never blocks; counts overlaps
    slow = lambda obj, path: (time.sleep(0.05), gate(obj, path))  # noqa: E731
    monkeypatch.setattr(trainer_module, "save_atomic", slow)
    run = trainer(tmp_path, "max_iterations=3", "checkpoint_interval=1")
    run.fit()
    # 3 interval saves + the final one; each: exports first, the checkpoint last; nothing left in flight
    assert gate.written == FILES_PER_SAVE * 4 and gate.max_active == 1 and not run.checkpoint_writer.busy


# ----------------------------------------------------------------------------------------------
# a crash between the temp write and the rename
# ----------------------------------------------------------------------------------------------


def test_a_failed_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    writer = CheckpointWriter(asynchronous=True)
    writer.submit([({"iteration": 1, "w": torch.ones(4)}, path)])
    writer.wait()

    def replace(src, dst):
        raise OSError(5, "Input/output error (simulated crash before the rename)")

    monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    writer.submit([({"iteration": 2, "w": torch.zeros(4)}, path)])
    with pytest.raises(CheckpointWriteError, match="checkpoint.pth"):
        writer.close()
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["iteration"] == 1 and torch.equal(state["w"], torch.ones(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]  # the temp file is removed


KILL_BEFORE_RENAME = textwrap.dedent("""
    import os, signal, sys, torch
    import hirl_like.engine.checkpoint as ck
    path = sys.argv[1]
    with ck.CheckpointWriter(asynchronous=True) as writer:
        writer.submit([({"iteration": 1, "w": torch.ones(4)}, path)])
    real = os.replace
    def replace(src, dst):  # the temp file is written and fsynced: die before the rename
        os.kill(os.getpid(), signal.SIGKILL)
    ck.os.replace = replace
    with ck.CheckpointWriter(asynchronous=True) as writer:
        writer.submit([({"iteration": 2, "w": torch.zeros(4)}, path)])
""")


def test_a_process_killed_between_temp_write_and_rename_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pth"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILL_BEFORE_RENAME, str(path)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    state = load_checkpoint(path)
    assert state["iteration"] == 1 and torch.equal(state["w"], torch.ones(4))
    stale = remove_stale_temp_files(tmp_path)  # what the trainer does before resuming
    assert [p.name.startswith(".checkpoint.pth.tmp.") for p in stale] == [True]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]


# ----------------------------------------------------------------------------------------------
# errors in the writer thread
# ----------------------------------------------------------------------------------------------


def disk_full(obj, path):
    raise OSError(28, "No space left on device")


def test_a_write_error_is_raised_at_the_next_save_and_only_once(tmp_path):
    writer = CheckpointWriter(asynchronous=True)
    files = [({"x": torch.ones(1)}, tmp_path / "main_vit_checkpoint.pth"), ({"x": torch.ones(1)}, tmp_path / "checkpoint.pth")]
    writer.submit(files, save=disk_full, label="the save at iteration 5")
    with pytest.raises(CheckpointWriteError) as info:
        writer.submit([({"x": torch.zeros(1)}, tmp_path / "checkpoint.pth")])
    message = str(info.value)
    assert "main_vit_checkpoint.pth" in message and "iteration 5" in message and "No space left on device" in message
    assert "not written either: checkpoint.pth" in message and "checkpoint_async=false" in message
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == 28
    assert not (tmp_path / "checkpoint.pth").exists()  # the failed save stopped; the refused one never started
    writer.close()  # reported once; the writer works again
    writer.submit([({"x": torch.zeros(1)}, tmp_path / "checkpoint.pth")])
    writer.close()
    assert torch.equal(load_checkpoint(tmp_path / "checkpoint.pth")["x"], torch.zeros(1))


def test_a_write_error_is_raised_at_exit(tmp_path):
    writer = CheckpointWriter(asynchronous=True)
    writer.submit([({"x": torch.ones(1)}, tmp_path / "checkpoint.pth")], save=disk_full)
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        writer.close()


def test_a_write_error_does_not_mask_the_error_that_ends_the_run(tmp_path, capsys):
    with pytest.raises(ValueError, match="the step failed"):
        with CheckpointWriter(asynchronous=True) as writer:
            writer.submit([({"x": torch.ones(1)}, tmp_path / "checkpoint.pth")], save=disk_full)
            raise ValueError("the step failed")
    err = capsys.readouterr().err
    assert "CheckpointWriteError" in err and "No space left on device" in err


def test_trainer_raises_a_background_write_error(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "save_atomic", disk_full)
    with pytest.raises(CheckpointWriteError, match=r"main_vit_checkpoint.pth \(the save at iteration 11\)"):
        trainer(tmp_path).fit()


def test_synchronous_mode_writes_in_the_calling_thread(tmp_path):
    writer = CheckpointWriter(asynchronous=False)
    seen = []
    writer.submit([({"x": torch.ones(1)}, tmp_path / "checkpoint.pth")],
                  save=lambda obj, path: seen.append(threading.current_thread() is threading.main_thread()))
    assert seen == [True] and not writer.busy
    with pytest.raises(OSError, match="No space left"):  # raised as it is, at once
        writer.submit([({"x": torch.ones(1)}, tmp_path / "checkpoint.pth")], save=disk_full)


# ----------------------------------------------------------------------------------------------
# the snapshot is taken at save time
# ----------------------------------------------------------------------------------------------


def test_what_is_written_is_the_state_at_save_time(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(5, 5)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 5)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    expected = file_bytes(state)
    gate = Gate()
    writer = CheckpointWriter(asynchronous=True)
    writer.submit([(state, tmp_path / "checkpoint.pth")], save=gate)
    assert gate.started.wait(timeout=30)
    with torch.no_grad():  # training goes on while the write is in flight
        model.weight.add_(1.0)
        model.bias.zero_()
    model(torch.randn(2, 5)).sum().backward()
    optimizer.step()
    state["model"]["extra"] = torch.ones(1)
    gate.release.set()
    writer.close()
    assert (tmp_path / "checkpoint.pth").read_bytes() == expected
