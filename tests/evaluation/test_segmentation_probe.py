"""The dense linear probe end to end: on a tiny random-init ViT it must beat the all-background
predictor; the command writes its JSON and refuses bad input with one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from hirl_like.cli import eval_segmentation
from hirl_like.cli.eval_shared import run_eval
from hirl_like.config import load_config
from hirl_like.data.digits import DigitsDataset
from hirl_like.evaluation.segmentation_data import CanvasSpec, build_canvases
from hirl_like.evaluation.segmentation_metrics import segmentation_scores
from hirl_like.evaluation.segmentation_probe import (
    constant_confusion,
    patch_token_features,
    probe_confusion,
    train_dense_probe,
)
from hirl_like.export import build_vision_backbone
from hirl_like.models.vit import VisionTransformer
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart" / "clip_vit_tiny_digits.yaml"  # tiny ViT, digits


def test_probe_on_tiny_vit_beats_the_constant_predictor():
    torch.manual_seed(0)
    vit = VisionTransformer(arch="vit_tiny", img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2).eval()
    train = build_canvases(DigitsDataset(split="train"), CanvasSpec(400, canvas_size=32, item_size=16, seed=0))
    test = build_canvases(DigitsDataset(split="val"), CanvasSpec(150, canvas_size=32, item_size=16, seed=1))
    train_x = patch_token_features(vit, train.images)
    assert train_x.shape == (400, 4, 4, 64)
    head, mean, std = train_dense_probe(train_x, train.masks, train.num_classes, epochs=5)
    probe = segmentation_scores(probe_confusion(head, mean, std, patch_token_features(vit, test.images), test.masks, 11))
    constant = segmentation_scores(constant_confusion(test.masks, 11))
    assert probe["miou"] > 1.3 * constant["miou"], (probe, constant)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A random-init ViT of the quickstart config, saved as a main_vit_checkpoint.pth."""
    folder = tmp_path_factory.mktemp("seg_run")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        vit = build_vision_backbone(load_config(CONFIG, []).pipeline.vision)
    torch.save(vit.export_state_dict(), folder / "main_vit_checkpoint.pth")
    return folder / "main_vit_checkpoint.pth"


def _argv(export, tmp_path, *extra: str) -> list[str]:
    return ["--pretrained", str(export), "-c", str(CONFIG), "--output_dir", str(tmp_path), "--cache_dir",
            str(tmp_path / "cache"), "--num_workers", "0", "--device", "cpu", *extra]


def test_command_writes_the_report(export, tmp_path, capsys):
    code = eval_segmentation.main(_argv(export, tmp_path, "--num_train", "200", "--num_test", "60", "--epochs", "2",
                                        "--compare_random_init"))
    assert code == 0
    report = json.loads((tmp_path / "eval_segmentation.json").read_text())
    assert report["metric"] == "segmentation" and report["canvas_size"] == 32 == report["img_size"]
    assert set(report["results"]) == {"pretrained", "random init"} and report["num_classes"] == 11
    for scores in (*report["results"].values(), report["constant_background"]):
        assert 0 <= scores["miou"] <= 100 and 0 <= scores["pixel_acc"] <= 100
    assert "all background" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("Digits_*.npz"))) == 2


def test_canvas_not_a_multiple_of_the_patch_is_refused(export, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        run_eval(eval_segmentation.main, _argv(export, tmp_path, "--canvas_size", "30"))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "patch size 8" in err and "--canvas_size 32" in err
    assert not (tmp_path / "eval_segmentation.json").exists()


def test_console_entry_names_a_missing_checkpoint(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "missing.pth"
    monkeypatch.setattr(sys, "argv", ["hirl-eval-segmentation", "--pretrained", str(missing), "--config", str(CONFIG)])
    with pytest.raises(SystemExit) as stop:
        eval_segmentation.entry()
    assert stop.value.code == 2
    assert f"checkpoint file not found: {missing}" in capsys.readouterr().err


def test_export_of_another_architecture_is_a_clear_error(export, tmp_path, capsys):
    state = torch.load(export, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("blocks.3.")}, tmp_path / "wrong.pth")
    with pytest.raises(SystemExit) as stop:
        run_eval(eval_segmentation.main, _argv(tmp_path / "wrong.pth", tmp_path))
    assert stop.value.code == 2 and "missing keys" in capsys.readouterr().err
