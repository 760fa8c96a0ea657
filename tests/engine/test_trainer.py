"""Trainer: outputs, exports, exact resume, NaN guard, and multi-process training via launch.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

from hirl_like.config import load_config
from hirl_like.engine.checkpoint import load_checkpoint
from hirl_like.engine.dist_setup import init_distributed
from hirl_like.engine.trainer import NonFiniteLossError, Trainer

ROOT = Path(__file__).resolve().parents[2]
CLIP = ROOT / "configs/quickstart/clip_vit_tiny_digits.yaml"
HARMONY = ROOT / "configs/quickstart/harmony_vit_tiny_digits.yaml"
FAST = [
    "batch_size=32", "num_workers=0", "progress_bar=false", "tensorboard=false", "log_interval=2",
    "pipeline.vision.depth=1", "pipeline.text.layers=1", "epochs=2",
]
HARMONY_FAST = FAST + [
    "pipeline.ibot.out_dim=64", "pipeline.ibot.patch_out_dim=64", "pipeline.text_distill.out_dim=64",
    "pipeline.mae.decoder_depth=1", "pipeline.mlm.decoder_depth=1",
]


def train(config: Path, out: Path, *overrides: str) -> dict:
    cfg = load_config(config, [f"output_dir={out}", *overrides])
    return Trainer(cfg, init_distributed(device="cpu")).fit()


def model_state(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoint.pth")["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = model_state(a), model_state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs after resume"


def test_outputs_and_strict_timm_export(tmp_path):
    summary = train(CLIP, tmp_path, "max_iterations=6", "tensorboard=true")
    assert summary["iterations"] == 6 and summary["params_in_sync"]
    for name in ("config.yaml", "checkpoint.pth", "main_vit_checkpoint.pth", "main_text_checkpoint.pth", "log.jsonl"):
        assert (tmp_path / name).is_file(), name
    assert any((tmp_path / "tensorboard").iterdir())
    cfg = load_config(tmp_path / "config.yaml")  # the saved config reloads as it is
    vision = cfg.pipeline.vision
    model = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=vision.img_size, patch_size=vision.patch_size, depth=vision.depth
    )
    model.load_state_dict(torch.load(tmp_path / "main_vit_checkpoint.pth", weights_only=True), strict=True)
    text = torch.load(tmp_path / "main_text_checkpoint.pth", weights_only=True)
    assert text["tokenizer"]["context_length"] == 32
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["type"] == "train"]
    assert {"loss", "clip", "lr", "weight_decay", "clip/logit_scale"} <= set(train_records[-1])
    state = load_checkpoint(tmp_path / "checkpoint.pth")
    assert state["iteration"] == 6 and {"optimizer", "scaler", "rng", "config"} <= set(state)


def test_lr_is_scaled_by_global_batch(tmp_path):
    cfg = load_config(CLIP, [f"output_dir={tmp_path}", *FAST, "optimizer.warmup_epochs=0"])
    trainer = Trainer(cfg, init_distributed(device="cpu"))
    assert trainer.opt_schedule.lr == pytest.approx(1e-3 * 32 / 256)
    decay = [g for g in trainer.optimizer.param_groups if g["apply_decay"]]
    no_decay = [g for g in trainer.optimizer.param_groups if not g["apply_decay"]]
    assert no_decay[0]["weight_decay"] == 0.0 and decay[0]["weight_decay"] > 0
    logit_scale = trainer.pipeline.objectives["clip"].logit_scale
    assert any(p is logit_scale for p in no_decay[0]["params"])


# online k-NN every 3 iterations (0.07 of 44 per epoch), on a small slice; collapse indicators every log window
ONLINE_EVAL = ["online_eval.knn_every=0.07", "online_eval.train_samples=200", "online_eval.val_samples=100"]


@pytest.mark.parametrize("config,overrides", [(CLIP, FAST), (HARMONY, HARMONY_FAST), (CLIP, FAST + ONLINE_EVAL)],
                         ids=["clip", "harmony", "clip_online_eval"])
def test_resume_mid_epoch_is_bit_exact(tmp_path, config, overrides):
    """Stopped at iteration 4 of 10 (mid-epoch) and resumed, the weights equal an uninterrupted run."""
    train(config, tmp_path / "straight", *overrides, "max_iterations=10")
    train(config, tmp_path / "resumed", *overrides, "max_iterations=4")
    summary = train(config, tmp_path / "resumed", *overrides, "max_iterations=10")
    assert summary["iterations"] == 10
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


def test_resume_refuses_another_architecture(tmp_path):
    train(CLIP, tmp_path, *FAST, "max_iterations=2")
    with pytest.raises(ValueError, match="different model"):
        train(CLIP, tmp_path, *FAST, "max_iterations=4", "pipeline.vision.depth=2")


def test_nan_guard_skips_steps_then_stops(tmp_path, monkeypatch):
    from hirl_like.pipelines.composed import ComposedPipeline

    original = ComposedPipeline.forward
    calls = {"n": 0}

    def poisoned(self, batch):
        out = original(self, batch)
        calls["n"] += 1
        if calls["n"] in (2, 3):  # two bad steps, then healthy again
            out["clip"] = out["clip"] * float("nan")
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(ComposedPipeline, "forward", poisoned)
    summary = train(CLIP, tmp_path / "a", *FAST, "max_iterations=5")
    assert summary["skipped_steps"] == 2
    records = [json.loads(line) for line in (tmp_path / "a/log.jsonl").read_text().splitlines()]
    skipped = [r for r in records if r["type"] == "skipped_step"]
    assert [r["terms"] for r in skipped] == [["clip"], ["clip"]]

    calls["n"] = -100  # every step bad from now on
    monkeypatch.setattr(ComposedPipeline, "forward", lambda self, b: {**original(self, b), "loss": torch.tensor(float("inf"), requires_grad=True)})
    with pytest.raises(NonFiniteLossError, match="bf16"):
        train(CLIP, tmp_path / "b", *FAST, "max_iterations=10", "max_bad_steps=3")


def run_cli(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def summary_of(out: Path) -> dict:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "summary"][-1]


@pytest.mark.slow
def test_two_process_training_keeps_gradients_in_sync(tmp_path):
    out = tmp_path / "np2"
    result = run_cli(["launch.py", "--launch", "tools/train.py", "--np", "2", "-c", str(CLIP), f"output_dir={out}", *FAST, "max_iterations=4"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(out)
    assert summary["world_size"] == 2 and summary["params_in_sync"]
    assert len(summary["param_checksums"]) == 2


@pytest.mark.slow
def test_two_node_training_over_loopback(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "nn2"
    common = ["launch.py", "--launch", "tools/train.py", "--nn", "2", "--np", "1", "--port", str(port), "-ma", "127.0.0.1"]
    script = ["-c", str(CLIP), f"output_dir={out}", *FAST, "max_iterations=4"]
    procs = [
        subprocess.Popen([sys.executable, *common, "--nr", str(r), *script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in (1, 0)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    summary = summary_of(out)
    assert summary["world_size"] == 2 and summary["params_in_sync"]


def _wait_for_new_checkpoint(path: Path, proc: subprocess.Popen, after: float, timeout: float = 120) -> bool:
    """True once ``path`` was (re)written later than ``after`` (mtime); False if ``proc`` ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.is_file() and path.stat().st_mtime > after:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("config,overrides", [(CLIP, FAST), (HARMONY, HARMONY_FAST)], ids=["clip", "harmony"])
def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path, config, overrides):
    """A run killed with SIGKILL several times at random moments (a checkpoint is written every
    step, so some kills land mid-write) and restarted with the same command ends with the weights
    of an uninterrupted run, bit for bit."""
    import random

    args = ["tools/train.py", "-c", str(config), *overrides, "max_iterations=12", "checkpoint_interval=1"]
    straight = run_cli([*args, f"output_dir={tmp_path / 'straight'}"])
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = tmp_path / "killed"
    checkpoint = killed / "checkpoint.pth"
    rng = random.Random(f"sigkill-{config.stem}")
    kills, resumed_from = 0, []
    for attempt in range(8):
        start = checkpoint.stat().st_mtime if checkpoint.is_file() else 0.0
        resumed_from.append(load_checkpoint(checkpoint)["iteration"] if checkpoint.is_file() else 0)
        proc = subprocess.Popen([sys.executable, *args, f"output_dir={killed}"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 3 and _wait_for_new_checkpoint(checkpoint, proc, after=start):
            time.sleep(rng.uniform(0.0, 1.0))  # somewhere in the next steps or checkpoint writes
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
        assert proc.wait(timeout=240) in (0, -signal.SIGKILL), proc.stderr.read()[-2000:]
        if proc.returncode == 0:
            break
    assert kills >= 2, f"only {kills} kill(s) landed mid-run; the run is too short for this machine"
    assert len(set(resumed_from)) >= 3, f"restarts resumed from iterations {resumed_from}"
    assert not list(killed.glob(".*.tmp.*")), "a killed write's temp file was not cleaned up"
    assert_same_weights(tmp_path / "straight", killed)


def _pids_with_env(marker: str, key: str, value: str) -> list[int]:
    """Processes whose command line contains ``marker`` and whose environment has key=value."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "cmdline").read_bytes().decode(errors="replace"):
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"{key}={value}".encode() in env:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's pid through /proc")
def test_killing_one_training_rank_ends_the_job(tmp_path):
    """SIGKILL one rank of a 2-process training run: the launcher stops the survivor (stuck in a
    collective) and exits non-zero within 60 s, naming the killed rank."""
    out = tmp_path / "np2_killed"
    cmd = [sys.executable, "launch.py", "--launch", "tools/train.py", "--np", "2", "-c", str(CLIP),
           f"output_dir={out}", *FAST, "epochs=50"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "log.jsonl").is_file() or '"type": "train"' not in (out / "log.jsonl").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        victims = _pids_with_env(str(out), "RANK", "1")
        assert len(victims) == 1, victims
        os.kill(victims[0], signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = proc.communicate(timeout=90)
        assert time.monotonic() - killed_at < 60
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "[launch] rank 1 (local 1 on node 0) was killed by signal 9 (SIGKILL)" in stderr, stderr[-3000:]
    assert not _pids_with_env(str(out), "RANK", "0"), "the surviving rank was left running"
