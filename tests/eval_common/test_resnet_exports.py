"""The evaluation commands on a ResNet backbone: our export and foreign (HIRL / MoCo style) checkpoints.

A run folder is written by hand: the DINO quickstart config with ``pipeline.vision`` a ResNet-18
with the small-image stem, trained at 16 px (``transform.global_size=16``), and as its
``main_vit_checkpoint.pth`` the export of a seeded ResNet-18 (random weights, randomised BN
statistics so that a mis-mapped key would show). The data are a small class-per-folder copy of
the embedded digits (24 train / 8 val images per class, 16 px) so that every command runs in a
few seconds on a busy CPU. The commands run in this process through the eval_common scripts; their
figures must equal the library's metrics on features extracted by hand with an independently
built timm network (same batches, same threads: the same numbers, not merely close ones).
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hirl_like.cli.eval_shared import ARCHS, arch_vision_node, eval_parser, resolve_config
from hirl_like.config import load_config, save_config
from hirl_like.data.digits import DigitsDataset
from hirl_like.data.image_folder import ImageFolderDataset
from hirl_like.data.transforms import EvalTransform
from hirl_like.evaluation.clustering import cluster_metrics, kmeans
from hirl_like.evaluation.knn import knn_classify
from hirl_like.evaluation.linear_probe import linear_probe
from hirl_like.models.resnet import ResNet, create_timm_resnet

ROOT = Path(__file__).resolve().parents[2]
EVAL_DIR = ROOT / "eval_common"
DINO = ROOT / "configs" / "quickstart" / "dino_vit_tiny_digits.yaml"
SIZE = 16
PER_CLASS = {"train": 24, "val": 8}
BATCH = 64
FAST = ["--num_workers", "0", "--batch_size", str(BATCH), "--device", "cpu"]
KS = [10, 20]
RESNET18_SMALL = ["pipeline.vision.small_image_stem=true"]


# ------------------------------------------------------------------------------------------------
# the run folder, the foreign checkpoints and the reference features
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    """``root/<split>/<digit>/<n>.png``: the first PER_CLASS[split] digits of each class of the split."""
    root = tmp_path_factory.mktemp("digits")
    for split, per_class in PER_CLASS.items():
        dataset, counts = DigitsDataset(split=split, image_size=SIZE), [0] * 10
        for i in range(len(dataset)):
            image, label = dataset.load(i)
            if counts[label] < per_class:
                (root / split / str(label)).mkdir(parents=True, exist_ok=True)
                image.save(root / split / str(label) / f"{i:04d}.png")
                counts[label] += 1
        assert counts == [per_class] * 10
    return root


def _data_overrides(root: Path) -> list[str]:
    return ["data.name=ImageFolder", f"data.root={root}"]


def _seeded_export() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = ResNet("resnet18", small_image_stem=True)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    return model.export_state_dict()


@pytest.fixture(scope="module")
def export() -> dict[str, torch.Tensor]:
    return _seeded_export()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits_root, export) -> Path:
    run = tmp_path_factory.mktemp("resnet_run")
    cfg = load_config(DINO, ["pipeline.vision={name: resnet18, small_image_stem: true}", f"transform.global_size={SIZE}",
                             *_data_overrides(digits_root), f"output_dir={run}"])
    save_config(cfg, run / "config.yaml")
    torch.save(export, run / "main_vit_checkpoint.pth")
    return run


@pytest.fixture(scope="module")
def reference(digits_root, export) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """split -> (pooled features, labels) of timm's ResNet-18 loaded strictly with the export,
    over the folder read with the evaluation transform, in the commands' batches."""
    net = create_timm_resnet("resnet18", small_image_stem=True)
    net.load_state_dict(export, strict=True)
    net.eval()
    out = {}
    for split in PER_CLASS:
        dataset = ImageFolderDataset(str(digits_root), split=split, transform=EvalTransform(SIZE))
        samples = [dataset[i] for i in range(len(dataset))]
        images = torch.stack([s["image"] for s in samples])
        labels = torch.tensor([int(s["label"]) for s in samples])
        with torch.no_grad():
            feats = torch.cat([net(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])
        out[split] = feats.float(), labels
    return out


def _foreign(folder: Path, layout: str, prefix: str, export: dict[str, torch.Tensor]) -> Path:
    """The export saved as another code base saves a ResNet: ``{layout: {prefix + key: ...}}`` with a
    projection head and (under another prefix) a second encoder of other weights beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = {f"{prefix}{k}": v for k, v in export.items()}
    weights[f"{prefix}fc.0.weight"] = torch.zeros(16, 512)
    weights[f"{prefix}fc.0.bias"] = torch.zeros(16)
    other = {k: v + 1.0 if v.is_floating_point() else v for k, v in export.items()}
    weights |= {f"module.encoder_k.{k}": v for k, v in other.items()}
    path = folder / "checkpoint_0199.pth.tar"
    torch.save({layout: weights, "epoch": 200, "arch": "resnet18"}, path)
    assert not (folder / "config.yaml").exists()
    return path


def _run(script: str, *args, monkeypatch) -> int:
    """Run eval_common/<script> as __main__ in this process; its exit code."""
    monkeypatch.setattr(sys, "argv", [str(EVAL_DIR / script), *map(str, args), *FAST])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(EVAL_DIR / script), run_name="__main__")
    return stop.value.code


def _report(folder: Path, name: str) -> dict:
    return json.loads((folder / f"eval_{name}.json").read_text())


# ------------------------------------------------------------------------------------------------
# our export, with its config.yaml beside it
# ------------------------------------------------------------------------------------------------


def test_knn_on_the_resnet_export_equals_knn_on_hand_extracted_features(run_dir, reference, tmp_path, monkeypatch, capsys):
    assert _run("eval_knn.py", "--pretrained", run_dir / "main_vit_checkpoint.pth", "--ks", "10,20",
                "--output_dir", tmp_path, monkeypatch=monkeypatch) == 0
    out = _report(tmp_path, "knn")
    assert (out["train_size"], out["test_size"]) == (240, 80) and out["ks"] == KS and "arch" not in out
    (train_x, train_y), (test_x, test_y) = reference["train"], reference["val"]
    expected = knn_classify(train_x, train_y, test_x, test_y, 10, ks=KS, temperature=0.07)
    assert out["results"]["pretrained"] == {str(k): v for k, v in expected.items()}
    assert expected[10]["top1"] > 100.0 * torch.bincount(test_y).max().item() / len(test_y)  # above chance
    assert "| pretrained " in capsys.readouterr().out


def test_clustering_on_the_resnet_export(run_dir, reference, tmp_path, monkeypatch):
    assert _run("eval_clustering.py", "--pretrained", run_dir / "main_vit_checkpoint.pth", "--restarts", "2",
                "--output_dir", tmp_path, monkeypatch=monkeypatch) == 0
    out = _report(tmp_path, "clustering")
    assert out["size"] == 80 and out["num_clusters"] == 10 and out["features"] == "L2-normalised avgpool"
    feats, labels = reference["val"]
    assert out["results"] == cluster_metrics(labels, kmeans(feats, 10, restarts=2, iterations=100, seed=0))


def test_linear_probe_on_the_resnet_export_reads_the_pooled_feature(run_dir, reference, tmp_path, monkeypatch):
    assert _run("eval_linear.py", "--pretrained", run_dir / "main_vit_checkpoint.pth", "--epochs", "4",
                "--lrs", "0.01,0.1,1", "--output_dir", tmp_path, monkeypatch=monkeypatch) == 0
    out = _report(tmp_path, "linear")
    assert out["features"] == "avgpool" and out["feature_dim"] == 512 and out["test_size"] == 80
    (train_x, train_y), (test_x, test_y) = reference["train"], reference["val"]
    expected = linear_probe(train_x, train_y, test_x, test_y, 10, learning_rates=[0.01, 0.1, 1.0], epochs=4,
                            batch_size=256, seed=0, device="cpu")
    r = out["results"]
    assert (r["best_lr"], r["test_top1"], r["test_top5"]) == (expected["best_lr"], expected["test_top1"], expected["test_top5"])
    assert r["test_top1"] > 10.0  # 10 balanced classes: chance is 10%


def test_avgpool_on_a_resnet_is_a_clear_error(run_dir, tmp_path, monkeypatch, capsys):
    code = _run("eval_linear.py", "--pretrained", run_dir / "main_vit_checkpoint.pth", "--avgpool",
                "--output_dir", tmp_path, monkeypatch=monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and "--avgpool" in err and "no tokens" in err and "Drop --avgpool" in err
    assert not (tmp_path / "eval_linear.json").exists()


# ------------------------------------------------------------------------------------------------
# foreign checkpoints: --arch and --backbone_prefix, no config beside them
# ------------------------------------------------------------------------------------------------


def test_moco_style_checkpoint_with_arch_and_prefix_and_no_config(digits_root, export, reference, tmp_path, monkeypatch):
    ckpt = _foreign(tmp_path / "moco", "model", "module.encoder_q.", export)
    assert _run("eval_knn.py", "--pretrained", ckpt, "--arch", "resnet18", "--backbone_prefix", "module.encoder_q.",
                "--ks", "10,20", *_data_overrides(digits_root), f"transform.global_size={SIZE}", *RESNET18_SMALL,
                monkeypatch=monkeypatch) == 0
    out = _report(ckpt.parent, "knn")  # beside the checkpoint
    assert out["arch"] == "resnet18" and out["checkpoint"].endswith("[:module.encoder_q.]")
    (train_x, train_y), (test_x, test_y) = reference["train"], reference["val"]
    expected = knn_classify(train_x, train_y, test_x, test_y, 10, ks=KS, temperature=0.07)
    assert out["results"]["pretrained"] == {str(k): v for k, v in expected.items()}  # encoder_q, not encoder_k


def test_state_dict_backbone_checkpoint_clusters_like_the_export(digits_root, export, reference, tmp_path, monkeypatch):
    ckpt = _foreign(tmp_path / "simsiam", "state_dict", "backbone.", export)
    assert _run("eval_clustering.py", "--pretrained", ckpt, "--arch", "resnet18", "--backbone_prefix", "backbone",
                "--restarts", "2", "--output_dir", tmp_path, *_data_overrides(digits_root),
                f"transform.global_size={SIZE}", *RESNET18_SMALL, monkeypatch=monkeypatch) == 0
    feats, labels = reference["val"]
    assert _report(tmp_path, "clustering")["results"] == cluster_metrics(labels, kmeans(feats, 10, restarts=2, seed=0))


def test_the_other_stem_names_the_flag_to_pass(digits_root, export, tmp_path, monkeypatch, capsys):
    ckpt = _foreign(tmp_path / "moco", "model", "module.encoder_q.", export)
    code = _run("eval_knn.py", "--pretrained", ckpt, "--arch", "resnet18", "--backbone_prefix", "module.encoder_q.",
                *_data_overrides(digits_root), monkeypatch=monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and "conv1.weight" in err and "pipeline.vision.small_image_stem=true" in err


def test_without_a_config_the_data_must_be_named(export, tmp_path, monkeypatch, capsys):
    ckpt = _foreign(tmp_path / "moco", "model", "module.encoder_q.", export)
    assert _run("eval_knn.py", "--pretrained", ckpt, "--arch", "resnet18", monkeypatch=monkeypatch) == 2
    assert "data.name=" in capsys.readouterr().err
    assert _run("eval_clustering.py", "--pretrained", ckpt, "data.name=Digits", monkeypatch=monkeypatch) == 2
    err = capsys.readouterr().err
    assert "no config found" in err and "--arch" in err


# ------------------------------------------------------------------------------------------------
# --arch: the vision node it gives
# ------------------------------------------------------------------------------------------------


def test_arch_vision_node():
    assert arch_vision_node({"name": "vit", "img_size": 32, "patch_size": 4}, "resnet50") == {"name": "resnet50"}
    assert arch_vision_node({"name": "resnet50", "small_image_stem": True, "drop_path_rate": 0.1}, "resnet18") == \
        {"name": "resnet18", "small_image_stem": True}
    vit = {"name": "vit", "arch": "vit_tiny", "img_size": 32, "patch_size": 8, "depth": 4}
    assert arch_vision_node(vit, "vit_base") == {"name": "vit", "arch": "vit_base", "img_size": 32, "patch_size": 8}
    assert arch_vision_node({"name": "resnet18"}, "vit_small", img_size=64) == {"name": "vit", "arch": "vit_small", "img_size": 64}
    assert set(ARCHS) == {"resnet18", "resnet50", "vit_tiny", "vit_small", "vit_base", "vit_large"}


def test_arch_replaces_the_configs_vision_node_before_the_overrides(run_dir, tmp_path):
    parser = eval_parser(None)
    ours = str(run_dir / "main_vit_checkpoint.pth")

    def vision(*argv: str) -> dict:
        return dict(resolve_config(parser.parse_args(["--pretrained", ours, *argv])).pipeline.vision)

    assert vision() == {"name": "resnet18", "small_image_stem": True}  # the config beside the checkpoint
    assert vision("--arch", "resnet50") == {"name": "resnet50", "small_image_stem": True}
    assert vision("--arch", "resnet50", "pipeline.vision.small_image_stem=false") == {"name": "resnet50", "small_image_stem": False}
    assert vision("--arch", "vit_small") == {"name": "vit", "arch": "vit_small", "img_size": SIZE}  # the training crop size
    # The same component: the keys the arch does not set go back to the constructor's defaults.
    dino = str(DINO)
    assert vision("--config", dino, "--arch", "vit_small") == \
        {"name": "vit", "arch": "vit_small", "img_size": 32, "patch_size": 8, "depth": None, "drop_path_rate": 0.0}
    assert vision("--config", dino, "--arch", "vit_tiny", "pipeline.vision.depth=4")["depth"] == 4
    # --arch's ViT builds and runs at the config's size.
    from hirl_like.export import build_vision_backbone

    vit = build_vision_backbone(vision("--config", dino, "--arch", "vit_tiny"))
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 192)
