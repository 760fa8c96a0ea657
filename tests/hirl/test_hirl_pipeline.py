"""The hirl pipeline: clustering at the epochs it is due, its state in checkpoint.pth, an exact
resume that does not cluster again, HIRL's log keys, and clear errors before training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hirl_like.pipelines.objectives.semantic as semantic_module
from hirl_like.config import ConfigError, load_config
from hirl_like.engine.checkpoint import load_checkpoint
from hirl_like.engine.dist_setup import init_distributed
from hirl_like.engine.trainer import Trainer
from hirl_like.hirl import HierarchicalClusters

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/quickstart/hirl_dino_vit_tiny_digits.yaml"
# 269 training digits, 8 steps per epoch; clusters at the start of epochs 1 and 2.
FAST = [
    "data.val_fraction=0.85", "batch_size=32", "num_workers=0", "progress_bar=false", "tensorboard=false",
    "log_interval=4", "epochs=3", "pipeline.vision.depth=1", "pipeline.dino.out_dim=64",
    "pipeline.dino.head_hidden_dim=32", "pipeline.dino.head_bottleneck_dim=16", "pipeline.num_cluster=[12,6,3]",
    "pipeline.num_neg_path=20", "pipeline.cluster_warmup_epoch=1", "pipeline.cluster_interval=1",
]


def trainer(out: Path, *overrides: str) -> Trainer:
    return Trainer(load_config(CONFIG, [f"output_dir={out}", *FAST, *overrides]), init_distributed(device="cpu"))


@pytest.fixture
def kmeans_calls(monkeypatch) -> list[int]:
    """The epochs hierarchical k-means ran at."""
    calls: list[int] = []
    original = semantic_module.hierarchical_kmeans

    def counted(*args, **kwargs):
        calls.append(kwargs["epoch"])
        return original(*args, **kwargs)

    monkeypatch.setattr(semantic_module, "hierarchical_kmeans", counted)
    return calls


def clusters_of(out: Path) -> HierarchicalClusters:
    state = load_checkpoint(out / "checkpoint.pth")["model"]
    (key,) = [k for k in state if k.endswith("objectives.semantic._extra_state")]
    return HierarchicalClusters.from_state_dict(state[key]["clusters"])


def test_clusters_when_due_logs_hirl_keys_and_resumes_exactly_without_clustering_again(tmp_path, kmeans_calls, one_thread):
    trainer(tmp_path / "straight").fit()
    assert kmeans_calls == [1, 2]
    records = [json.loads(line) for line in (tmp_path / "straight/log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "clustering"] == [1, 2]
    train = [r for r in records if r["type"] == "train"]
    before, after = [r for r in train if r["iteration"] <= 8], [r for r in train if r["iteration"] > 8]
    assert all(r["semantic/active"] == 0 and r["semantic_loss"] == 0 for r in before)  # no clusters yet
    assert all(r["semantic/active"] == 1 and r["semantic_loss"] > 0 for r in after)
    assert {"image_loss", "semantic/spd_accuracy", "semantic/pos_loss", "semantic/neg_loss"} <= set(after[-1])
    clusters = clusters_of(tmp_path / "straight")
    assert clusters.epoch == 2 and clusters.num_cluster == [12, 6, 3] and clusters.num_samples == 269
    clusters.check_consistent()

    kmeans_calls.clear()
    trainer(tmp_path / "resumed", "max_iterations=12").fit()  # killed mid-epoch 1, after its clustering
    assert kmeans_calls == [1] and clusters_of(tmp_path / "resumed").epoch == 1
    trainer(tmp_path / "resumed").fit()
    assert kmeans_calls == [1, 2]  # epoch 1 was not clustered again
    a = load_checkpoint(tmp_path / "straight/checkpoint.pth")["model"]
    b = load_checkpoint(tmp_path / "resumed/checkpoint.pth")["model"]
    for key, value in a.items():
        if key.endswith("_extra_state"):
            for name, t in value["clusters"].items():
                assert torch.equal(t, b[key]["clusters"][name]), name
        else:
            assert torch.equal(value, b[key]), f"{key} differs after resume"


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["pipeline.num_cluster=[300,100]"], r"num_cluster\[0\]=300 is more clusters than the 269 training images"),
        (["pipeline.num_cluster=[12,20]"], r"num_cluster\[1\]=20 is more clusters than the 12 centroids of level 0"),
        (["pipeline.num_cluster=[]"], "num_cluster is empty"),
        (["pipeline.cluster_warmup_epoch=3"], "cluster_warmup_epoch=3 is not within the run's 3 epochs"),
        (["pipeline.train_emb=cnn"], "train_emb='cnn' does not fit the VisionTransformer backbone; use vit_cls or vit_mean"),
        (["pipeline.cluster_interval=0"], "cluster_interval must be an integer >= 1"),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, overrides, match):
    with pytest.raises((ValueError, ConfigError), match=match):
        trainer(tmp_path, *overrides)
    assert not (tmp_path / "checkpoint.pth").exists()


def test_hirl_takes_its_base_method_as_base(tmp_path):
    with pytest.raises((ValueError, ConfigError), match="give the base method as pipeline.base"):
        trainer(tmp_path, "+pipeline.objectives=[dino]")
    with pytest.raises((ValueError, ConfigError), match="unknown argument 'num_clusters'; did you mean 'num_cluster'"):
        trainer(tmp_path, "+pipeline.num_clusters=[3]")


def test_resume_refuses_a_clustering_of_another_shape(tmp_path):
    trainer(tmp_path, "max_iterations=10").fit()
    with pytest.raises(ValueError, match=r"clusters per level"):
        trainer(tmp_path, "pipeline.num_cluster=[10,5,2]", "resume.allow_changes=true")


@pytest.mark.slow
def test_two_processes_cluster_once_and_train_in_step(tmp_path):
    """Two ranks embed uneven shards (135 + 134 images, none padded) and train on one clustering:
    their weights agree at the end (the trainer's checksum check) and the clustering covers every
    image exactly once."""
    out = tmp_path / "np2"
    args = [sys.executable, "launch.py", "--launch", "tools/train.py", "--np", "2", "-c", str(CONFIG),
            f"output_dir={out}", *FAST, "pipeline.cluster_warmup_epoch=0", "max_iterations=6", "batch_size=16", "pipeline.train_emb=vit_mean"]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    summary = [r for r in records if r["type"] == "summary"][-1]
    assert summary["world_size"] == 2 and summary["params_in_sync"]
    assert [r["images"] for r in records if r["type"] == "clustering"] == [269]
    clusters = clusters_of(out)
    assert clusters.num_samples == 269 and clusters.epoch == 0
    clusters.check_consistent()
