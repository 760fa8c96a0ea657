"""Online evaluation: the k-NN schedule and slices, the config node, RNG isolation, the k-NN a short
run logs against one computed by hand from its export, and collapse warnings in the trainer's hook.
(The bit-exact resume with online evaluation on is a case of tests/engine/test_trainer.py.)"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from hirl_like.config import ConfigError, load_config
from hirl_like.config.safe_yaml import read_yaml
from hirl_like.data.build import build_eval_dataset
from hirl_like.engine.dist_setup import init_distributed
from hirl_like.engine.online_eval import OnlineEval, OnlineEvalConfig, knn_interval, knn_slices, rng_untouched
from hirl_like.engine.trainer import Trainer
from hirl_like.evaluation.knn import knn_classify
from hirl_like.export import load_vision_backbone

ROOT = Path(__file__).resolve().parents[2]
CLIP = ROOT / "configs/quickstart/clip_vit_tiny_digits.yaml"
FAST = [
    "batch_size=32", "num_workers=0", "progress_bar=false", "tensorboard=false", "log_interval=2",
    "pipeline.vision.depth=1", "pipeline.text.layers=1", "epochs=2",
]
# Digits: 1437 training images, 44 iterations per epoch at batch 32: 0.07 epochs = every 3 iterations
ONLINE = ["online_eval.knn_every=0.07", "online_eval.train_samples=300", "online_eval.val_samples=120"]


# -- schedule, slices, config -----------------------------------------------------------------
def test_knn_interval_follows_the_span_convention():
    assert knn_interval(0, 44, 88) == 0  # off
    assert knn_interval("0%", 44, 88) == 0
    assert knn_interval(0.5, 10, 100) == 5  # epochs
    assert knn_interval("10%", 10, 100) == 10  # a share of the schedule
    assert knn_interval(0.01, 10, 100) == 1  # at least every iteration
    assert knn_interval(0.07, 44, 88) == 3
    with pytest.raises(ValueError, match="online_eval.knn_every"):
        knn_interval(-1, 10, 100)


def test_knn_slices_are_fixed_disjoint_and_sized():
    bank, queries = knn_slices(1000, 300, 200, 100, seed=0)
    assert (bank, queries) == knn_slices(1000, 300, 200, 100, seed=0)
    assert bank != knn_slices(1000, 300, 200, 100, seed=1)[0]
    assert len(bank) == 200 and len(queries) == 100 and bank == sorted(bank) and max(queries) < 300
    bank, queries = knn_slices(1000, None, 200, 100, seed=0)  # held out of the training split
    assert len(bank) == 200 and len(queries) == 100 and not set(bank) & set(queries)
    bank, queries = knn_slices(30, None, 200, 100, seed=0)  # too few images: shared in proportion
    assert len(bank) + len(queries) == 30 and not set(bank) & set(queries) and len(bank) == 20
    assert knn_slices(10, 5, 200, 100, seed=0) == (list(range(10)), list(range(5)))


def test_the_node_in_defaults_yaml_is_the_dataclass():
    node = read_yaml(ROOT / "hirl_like/defaults.yaml")["online_eval"]
    assert OnlineEvalConfig.from_node(node) == OnlineEvalConfig()
    assert node["knn_every"] == 0  # off by default
    with pytest.raises(ValueError, match="unknown online_eval keys"):
        OnlineEvalConfig.from_node({**node, "knn": 3})


@pytest.mark.parametrize("overrides, match", [
    (["online_eval.knn_evry=1"], r"unknown config key 'online_eval.knn_evry'. Did you mean 'knn_every'"),
    (["+online_eval.knn_evry=1"], r"unknown config key 'online_eval.knn_evry'.*Valid keys under 'online_eval'"),
    (["online_eval={knn_k: 5, extra: 1}"], r"unknown config key 'online_eval.extra'"),
    (["online_eval.towers=teacher"], "must be one of exported, student"),
    (["online_eval.knn_every=abc"], "a share of the run like '40%'"),
    (["online_eval.knn_every=-0.5"], "a number of epochs >= 0"),
    (["online_eval.knn_k=0"], r"online_eval.knn_k=0: must be an int >= 1"),
    (["online_eval.knn_temperature=0"], "must be a number > 0"),
])
def test_bad_online_eval_keys_fail_at_load_time(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(CLIP, overrides)


def test_spans_and_null_val_split_load(tmp_path):
    cfg = load_config(CLIP, ["online_eval.knn_every=0.5", "online_eval.val_split=null"])
    assert cfg.online_eval.knn_every == 0.5 and cfg.online_eval.val_split is None
    assert load_config(CLIP, ["online_eval.knn_every='10%'"]).online_eval.knn_every == "10%"
    file = tmp_path / "bad.yaml"
    file.write_text(f"_base_: {CLIP}\nonline_eval:\n  knn_evry: 2\n")
    with pytest.raises(ConfigError, match="knn_evry"):
        load_config(file)


def test_rng_untouched_restores_every_generator():
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    with rng_untouched(torch.device("cpu")):
        torch.rand(5), random.random(), np.random.rand(3)
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


# -- a short run: the logged k-NN equals one computed by hand from the export -------------------
def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _by_hand(model: nn.Module, dataset, indices: list[int], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            samples = [dataset[i] for i in indices[start:start + batch_size]]
            feats.append(model(torch.stack([s["image"] for s in samples])))
            labels += [s["label"] for s in samples]
    return torch.cat(feats), torch.tensor(labels)


def test_logged_knn_equals_knn_on_the_export(tmp_path, capsys):
    cfg = load_config(CLIP, [f"output_dir={tmp_path}", *FAST, *ONLINE, "max_iterations=6"])
    trainer = Trainer(cfg, init_distributed(device="cpu"))
    trainer.fit()
    records = _records(tmp_path)
    knn = [r for r in records if r["type"] == "online_knn"]
    assert [r["iteration"] for r in knn] == [3, 6]
    assert all(r["train_samples"] == 300 and r["val_samples"] == 120 and r["val_split"] == "val" for r in knn)
    assert trainer.online_eval.postfix() == {"knn": f"{knn[-1]['top1']:.1f}"}
    collapse = [r for r in records if r["type"] == "collapse"]
    assert [r["iteration"] for r in collapse] == [2, 4, 6]
    assert all(r["effective_rank"] > 1.5 and r["embedding_dim"] == 192 for r in collapse)
    assert not [r for r in records if r["type"] == "collapse_warning"] and "collapse" not in capsys.readouterr().err

    # independently: the export (iteration 6) on the same slices of the same splits
    model, _ = load_vision_backbone(tmp_path / "main_vit_checkpoint.pth", dict(cfg.pipeline.vision))
    bank_set, query_set = build_eval_dataset(cfg, "train"), build_eval_dataset(cfg, "val")
    bank_idx, query_idx = knn_slices(len(bank_set), len(query_set), 300, 120, seed=int(cfg.seed))
    bank_x, bank_y = _by_hand(model, bank_set, bank_idx, 256)
    query_x, query_y = _by_hand(model, query_set, query_idx, 256)
    expected = knn_classify(bank_x, bank_y, query_x, query_y, 10, ks=(20,), temperature=0.07, use_faiss=False)[20]
    assert knn[-1]["top1"] == pytest.approx(expected["top1"], abs=1e-9)
    assert knn[-1]["top5"] == pytest.approx(expected["top5"], abs=1e-9)


def test_online_eval_does_not_change_the_training(tmp_path):
    """k-NN (iteration 3) and collapse indicators (2, 3) leave the weights as a run without them."""
    def weights(out: Path, *overrides: str) -> dict[str, torch.Tensor]:
        cfg = load_config(CLIP, [f"output_dir={out}", *FAST, "max_iterations=3", *overrides])
        trainer = Trainer(cfg, init_distributed(device="cpu"))
        trainer.fit()
        return trainer.pipeline.state_dict()

    plain = weights(tmp_path / "plain", "online_eval.collapse_indicators=false")
    online = weights(tmp_path / "online", *ONLINE)
    assert {r["type"] for r in _records(tmp_path / "online")} >= {"online_knn", "collapse"}
    assert plain.keys() == online.keys() and all(torch.equal(plain[k], online[k]) for k in plain)


# -- the trainer's hook on a collapsed student ---------------------------------------------------
class _Backbones(nn.Module):
    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student_vision = student


class _Pipeline(nn.Module):
    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.backbones = _Backbones(student)

    def export_vision(self) -> nn.Module:
        return self.backbones.student_vision


class _Constant(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.ones(images.shape[0], 16)


def _hook(student: nn.Module, overrides: list[str], logged: list[dict]) -> OnlineEval:
    cfg = load_config(CLIP, [*FAST, *overrides])
    return OnlineEval(
        cfg, _Pipeline(student), train_split="train", device=torch.device("cpu"), rank=0, world_size=1,
        iters_per_epoch=44, schedule_iterations=88, total_iterations=88, log=lambda r, step=None: logged.append(r),
    )


def test_a_collapsed_student_warns_after_m_log_windows(capsys):
    logged: list[dict] = []
    hook = _hook(_Constant(), ["online_eval.collapse_warn_after=3"], logged)
    batch = {"global_crops": [torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)]}
    values = {"dino/target_entropy_ratio": 0.5, "loss": 1.0}
    for iteration in range(1, 9):  # log windows end at 2, 4, 6, 8
        hook.after_step(iteration, batch, values)
    collapse = [r for r in logged if r["type"] == "collapse"]
    assert [r["iteration"] for r in collapse] == [2, 4, 6, 8]
    assert collapse[0]["effective_rank"] == pytest.approx(1.0) and collapse[0]["dino/target_entropy_ratio"] == 0.5
    warnings = [r for r in logged if r["type"] == "collapse_warning"]
    assert {(w["indicator"], w["iteration"]) for w in warnings} == {("effective_rank", 6), ("embedding_std_ratio", 6)}
    err = capsys.readouterr().err
    assert err.count("warning: collapse at iteration 6") == 2 and "effective_rank=1" in err
    assert hook.pipeline.training  # modes put back


def test_a_random_student_does_not_warn_and_modes_are_restored(capsys):
    from hirl_like.registry import MODELS

    torch.manual_seed(0)
    student = MODELS.build({"name": "vit", "arch": "vit_tiny", "img_size": 32, "patch_size": 8, "depth": 1})
    logged: list[dict] = []
    hook = _hook(student, ["online_eval.collapse_warn_after=1"], logged)
    hook.pipeline.train()
    images = build_eval_dataset(load_config(CLIP), "train")
    batch = {"image": torch.stack([images[i]["image"] for i in range(16)])}
    state = torch.get_rng_state()
    hook.after_step(2, batch, None)
    assert torch.equal(torch.get_rng_state(), state) and student.training
    (record,) = logged
    assert record["type"] == "collapse" and record["effective_rank"] > 1.5
    assert "warning" not in capsys.readouterr().err


def test_queries_fall_back_to_held_out_training_images(capsys):
    cfg = load_config(CLIP, [*FAST, "online_eval.knn_every=1", "online_eval.val_split=nosuchsplit",
                             "online_eval.train_samples=50", "online_eval.val_samples=20"])
    hook = OnlineEval(cfg, _Pipeline(_Constant()), train_split="train", device=torch.device("cpu"), rank=0, world_size=1,
                      iters_per_epoch=44, schedule_iterations=88, total_iterations=88, log=lambda r, step=None: None)
    assert "held out of the training split" in capsys.readouterr().err
    assert hook.knn.val_split is None and hook.knn.queries.dataset is hook.knn.bank.dataset
    assert not set(hook.knn.bank.indices) & set(hook.knn.queries.indices)
    assert OmegaConf.select(cfg, "online_eval.val_split") == "nosuchsplit"
