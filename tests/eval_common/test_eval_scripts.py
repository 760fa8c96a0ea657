"""The five evaluation scripts end to end on a tiny CLIP run over the digits data.

One module fixture trains the quickstart CLIP config for 80 iterations (well past random
initialisation, still under a minute) in a tmp folder; another starts every script run at once
as subprocesses (python imports dominate their cost, so they overlap well) and the tests read
their exit codes, output and JSON. Figures are compared with references, never with fixed
bounds: k-NN, clustering and the linear probe of the trained ViT against the same ViT at random
initialisation on the same data (``--compare_random_init``), zero-shot and class-level retrieval
against chance computed from the split's labels, and the full checkpoint against its export.
The in-process tests cover bad input and the commands' caption / prompt helpers; the export
round trip itself is tests/evaluation/test_export.py.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hirl_like.cli.eval_retrieval import split_captions
from hirl_like.cli.eval_zeroshot import class_prompts
from hirl_like.data.captions import DIGIT_CLASSNAMES, DIGIT_TEMPLATES
from hirl_like.data.digits import DigitsDataset
from hirl_like.export import load_text_tower

ROOT = Path(__file__).resolve().parents[2]
EVAL_DIR = ROOT / "eval_common"
CONFIG = ROOT / "configs" / "quickstart" / "clip_vit_tiny_digits.yaml"
# 80 iterations at a doubled lr: k-NN top-1 ~67% against ~48% at random init (3 iterations left
# the ViT indistinguishable from its initialisation).
FAST_TRAIN = ["max_iterations=80", "epochs=4", "batch_size=64", "optimizer.lr=2e-3", "num_workers=0",
              "progress_bar=false", "tensorboard=false"]
FAST_EVAL = ["--num_workers", "0", "--batch_size", "512"]
TIMEOUT_S = 300
TRAIN_SIZE, TEST_SIZE = 1437, 360  # digits train / val split


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"  # several runs share 2 cores; launch.py gives 2 ranks 1 thread each too
    return env


def _python(*args: str | Path) -> list[str]:
    return [sys.executable, *map(str, args)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clip_run")
    proc = subprocess.run(
        _python(ROOT / "tools" / "train.py", "-c", CONFIG, f"output_dir={out}", *FAST_TRAIN),
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.yaml", "checkpoint.pth", "main_vit_checkpoint.pth", "main_text_checkpoint.pth"):
        assert (out / name).is_file(), name
    return out


def _script_runs(run_dir: Path, work: Path) -> dict[str, list[str]]:
    """name -> argv; every run writes its JSON into its own folder under ``work``."""
    vit = run_dir / "main_vit_checkpoint.pth"

    def script(name: str, *args: str | Path, launch: bool = False) -> list[str]:
        path = EVAL_DIR / f"eval_{name}.py"
        head = _python(ROOT / "launch.py", "--launch", path) if launch else _python(path)
        return [*head, *map(str, args), *FAST_EVAL]

    def out(name: str) -> list[str]:
        (work / name).mkdir()
        return ["--output_dir", str(work / name)]

    return {
        "knn": script("knn", "--pretrained", vit, "--compare_random_init", *out("knn"), launch=True),
        "knn_full": script("knn", "--pretrained", run_dir / "checkpoint.pth", *out("knn_full")),
        "clustering": script("clustering", "--pretrained", vit, "--compare_random_init", *out("clustering")),
        "linear": script("linear", "--pretrained", vit, "--avgpool", "--epochs", "5", "--lrs", "0.001,0.01,0.1,1",
                         "--compare_random_init", *out("linear")),
        "zeroshot": script("zeroshot", "--pretrained", vit, *out("zeroshot")),
        "retrieval": script("retrieval", "--pretrained", vit, "--captions_per_image", "2", *out("retrieval")),
        "retrieval_class": script("retrieval", "--pretrained", vit, "--captions_per_image", "2", "--match", "class",
                                  *out("retrieval_class")),
    }


@pytest.fixture(scope="module")
def runs(run_dir: Path, tmp_path_factory) -> dict[str, SimpleNamespace]:
    """Every script run of this module, started together; name -> (returncode, stdout, stderr, json)."""
    work = tmp_path_factory.mktemp("evals")
    cmds = _script_runs(run_dir, work)
    procs = {
        name: subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, cmd in cmds.items()
    }
    deadline = time.monotonic() + TIMEOUT_S
    results = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            files = list((work / name).glob("eval_*.json")) if (work / name).is_dir() else []
            payload = json.loads(files[0].read_text()) if files else None
            results[name] = SimpleNamespace(returncode=proc.returncode, stdout=stdout, stderr=stderr, json=payload)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _ok(run: SimpleNamespace) -> dict:
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.json is not None
    return run.json


def _in_percent(*values: float) -> None:
    for v in values:
        assert 0.0 <= v <= 100.0, values


def _chance_top1(split: str = "val") -> float:
    """Top-1 (%) of always answering the split's most frequent class: the reference of a
    classifier that learnt nothing about the images."""
    dataset = DigitsDataset(split=split)
    labels = torch.tensor([dataset.load(i)[1] for i in range(len(dataset))])
    return 100.0 * torch.bincount(labels).max().item() / len(labels)


# ------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------


def test_knn_through_launch_py(runs):
    out = _ok(runs["knn"])
    assert out["metric"] == "knn" and out["ks"] == [10, 20, 100, 200] and out["temperature"] == 0.07
    assert (out["train_size"], out["test_size"]) == (TRAIN_SIZE, TEST_SIZE)
    scores, untrained = out["results"]["pretrained"], out["results"]["random init"]
    assert set(scores) == set(untrained) == {"10", "20", "100", "200"}
    for k, v in scores.items():
        _in_percent(v["top1"], v["top5"])
        assert v["top5"] >= v["top1"]
        assert v["top1"] > untrained[k]["top1"], k  # training helped, at every k
    assert "| pretrained " in runs["knn"].stdout and "| random init " in runs["knn"].stdout
    assert "eval_knn.json" in runs["knn"].stdout


def test_full_checkpoint_gives_the_same_knn(runs):
    # CLIP has no EMA teacher: main_vit_checkpoint.pth is the student, which checkpoint.pth holds too.
    full = _ok(runs["knn_full"])
    assert "backbones.student_vision." in full["checkpoint"]
    assert full["results"]["pretrained"] == _ok(runs["knn"])["results"]["pretrained"]


def test_clustering(runs):
    out = _ok(runs["clustering"])
    assert out["split"] == "val" and out["size"] == TEST_SIZE
    assert out["num_clusters"] == out["num_classes"] == 10 and out["restarts"] == 5
    r, untrained = out["results"], out["random_init"]
    assert set(r) == set(untrained) == {"nmi", "ami", "ari", "acc"}
    _in_percent(r["nmi"], r["acc"])
    assert -100.0 <= r["ari"] <= 100.0 and r["ami"] <= 100.0
    for metric in r:  # the trained ViT's clusters follow the classes better than the untrained one's
        assert r[metric] > untrained[metric], metric
    assert "| random init " in runs["clustering"].stdout


def test_linear_probe_picks_lr_on_held_out_train(runs):
    out = _ok(runs["linear"])
    assert out["features"] == "cls+avgpool" and out["feature_dim"] == 2 * 192  # CLS and mean patch token
    assert out["learning_rates"] == [0.001, 0.01, 0.1, 1.0] and out["epochs"] == 5
    r = out["results"]
    assert r["fit_size"] + r["val_size"] == out["train_size"] == TRAIN_SIZE and r["val_size"] > 0
    val = {float(k): v for k, v in r["val_top1"].items()}
    assert set(val) == set(out["learning_rates"])
    assert r["best_lr"] == max(out["learning_rates"], key=lambda lr: val[lr])  # chosen on held-out train data
    _in_percent(r["test_top1"], r["test_top5"], *val.values())
    assert r["test_top5"] >= r["test_top1"]
    untrained = out["random_init"]
    assert untrained["fit_size"] == r["fit_size"] and set(untrained["val_top1"]) == set(r["val_top1"])
    assert r["test_top1"] > untrained["test_top1"]  # the same probe on the same ViT untrained


def test_zeroshot(runs):
    out = _ok(runs["zeroshot"])
    assert out["classnames"] == list(DIGIT_CLASSNAMES) and out["templates"] == list(DIGIT_TEMPLATES)
    assert out["text_checkpoint"].endswith("main_text_checkpoint.pth") and out["logit_scale"] > 0
    r = out["results"]
    _in_percent(r["top1"], r["top5"])
    assert r["top5"] >= r["top1"]
    assert r["top1"] > _chance_top1()


def test_retrieval(runs):
    out = _ok(runs["retrieval"])
    assert out["num_images"] == TEST_SIZE and out["num_captions"] == 2 * TEST_SIZE
    assert 1 <= out["distinct_captions"] <= len(DIGIT_CLASSNAMES) * len(DIGIT_TEMPLATES)
    r = out["results"]
    assert set(r) == {f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    _in_percent(*r.values())
    for d in ("i2t", "t2i"):
        assert r[f"{d}_r1"] <= r[f"{d}_r5"] <= r[f"{d}_r10"]


def test_class_level_retrieval(runs):
    """Without caption noise a caption's own image is of its class: class recall >= instance recall."""
    instance, by_class = _ok(runs["retrieval"]), _ok(runs["retrieval_class"])
    assert by_class["match"] == "class" and instance["match"] == "instance"
    for key, value in by_class["results"].items():
        assert value >= instance["results"][key], key
    assert by_class["results"]["i2t_r10"] > instance["results"]["i2t_r10"]
    # A random ranking puts an item of the query's class first about as often as the class occurs.
    chance = _chance_top1()
    assert by_class["results"]["i2t_r1"] > chance and by_class["results"]["t2i_r1"] > chance


def _run_in_process(script: str, *args: str | Path, monkeypatch) -> int:
    """Run eval_common/<script> as __main__ in this process (bad-input runs stop before any heavy work)."""
    monkeypatch.setattr(sys, "argv", [str(EVAL_DIR / script), *map(str, args), *FAST_EVAL])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(EVAL_DIR / script), run_name="__main__")
    return stop.value.code


def test_wrong_architecture_lists_missing_and_unexpected_keys(run_dir, tmp_path, monkeypatch, capsys):
    # A checkpoint for another architecture: one block fewer and a decoder weight the ViT lacks.
    state = torch.load(run_dir / "main_vit_checkpoint.pth", weights_only=True)
    wrong = {k: v for k, v in state.items() if not k.startswith("blocks.3.")}
    wrong["decoder.weight"] = torch.zeros(4, 4)
    torch.save(wrong, tmp_path / "wrong_arch.pth")
    code = _run_in_process("eval_knn.py", "--pretrained", tmp_path / "wrong_arch.pth", "--config",
                           run_dir / "config.yaml", "--output_dir", tmp_path, monkeypatch=monkeypatch)
    err = capsys.readouterr().err
    assert code == 2
    assert "missing keys" in err and "blocks.3." in err
    assert "unexpected keys" in err and "decoder.weight" in err
    assert not (tmp_path / "eval_knn.json").exists()


def test_missing_checkpoint_names_the_path(run_dir, tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere" / "missing.pth"
    code = _run_in_process("eval_clustering.py", "--pretrained", missing, "--config", run_dir / "config.yaml",
                           monkeypatch=monkeypatch)
    assert code == 2
    assert f"checkpoint file not found: {missing}" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["eval_zeroshot.py", "eval_retrieval.py"])
def test_run_without_text_tower_is_a_clear_error(script, run_dir, tmp_path, monkeypatch, capsys):
    # An image-only run: the backbone and its config, no text export beside them.
    for name in ("main_vit_checkpoint.pth", "config.yaml"):
        shutil.copy(run_dir / name, tmp_path / name)
    code = _run_in_process(script, "--pretrained", tmp_path / "main_vit_checkpoint.pth", monkeypatch=monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and "has no text tower" in err and "--text_pretrained" in err


NAMES = ("knn", "clustering", "linear", "zeroshot", "retrieval", "segmentation", "finetune")


@pytest.mark.parametrize("name", NAMES)
def test_console_entry_runs_the_command_cleanly(name, run_dir, tmp_path, monkeypatch, capsys):
    """``hirl-eval-<name>`` (pyproject.toml) is the same command with the same one-line errors."""
    entry = importlib.import_module(f"hirl_like.cli.eval_{name}").entry
    missing = tmp_path / "missing.pth"
    monkeypatch.setattr(sys, "argv", [f"hirl-eval-{name}", "--pretrained", str(missing), "--config",
                                      str(run_dir / "config.yaml")])
    with pytest.raises(SystemExit) as stop:
        entry()
    assert stop.value.code == 2
    assert f"checkpoint file not found: {missing}" in capsys.readouterr().err


@pytest.mark.parametrize("name", NAMES)
def test_eval_common_scripts_are_thin(name):
    """The scripts only start the command: no model, no checkpoint parsing, no sys.path edits."""
    source = (EVAL_DIR / f"eval_{name}.py").read_text()
    code = [line for line in source.split('"""')[-1].splitlines() if line.strip()]
    assert code == [f"from hirl_like.cli.eval_{name} import main", "from hirl_like.cli.eval_shared import run_eval",
                    'if __name__ == "__main__":', "    run_eval(main)"]
    assert f"eval_common/eval_{name}.py --pretrained" in source  # the usage line
    assert sorted(p.name for p in EVAL_DIR.glob("*.py")) == sorted(f"eval_{n}.py" for n in NAMES)


@pytest.mark.slow
def test_two_processes_give_the_single_process_knn(run_dir, runs, tmp_path):
    cmd = _python(ROOT / "launch.py", "--launch", EVAL_DIR / "eval_knn.py", "--np", "2",
                  "--pretrained", run_dir / "main_vit_checkpoint.pth", "--output_dir", tmp_path, *FAST_EVAL)
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "eval_knn.json").read_text())
    one = _ok(runs["knn"])
    # Every sample gathered exactly once (no padded duplicates) and the same figures.
    assert (two["train_size"], two["test_size"]) == (TRAIN_SIZE, TEST_SIZE)
    assert two["results"]["pretrained"] == one["results"]["pretrained"]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone reports


# ------------------------------------------------------------------------------------------------
# in process: the trained run's text tower and the commands' helpers
# ------------------------------------------------------------------------------------------------


def test_text_tower_from_export_equals_the_one_in_the_full_checkpoint(run_dir):
    export = load_text_tower(run_dir / "main_text_checkpoint.pth", vision_width=192)
    full = load_text_tower(run_dir / "checkpoint.pth", vision_width=192)
    tokens = export.tokenizer(["the digit seven.", "a handwritten digit two."])
    assert tokens.shape == (2, 32)  # context length of the run's text config
    a, b = export.encode_text(tokens), full.encode_text(tokens)
    assert a.shape == (2, 128) and torch.equal(a, b)
    assert torch.equal(export.image_projection.weight, full.image_projection.weight)
    image = export.encode_image(torch.randn(3, 192))
    assert image.shape == (3, 128) and torch.allclose(image.norm(dim=-1), torch.ones(3))
    assert export.logit_scale == pytest.approx(full.logit_scale)


def test_retrieval_captions_are_image_major():
    dataset = DigitsDataset(split="val")
    labels = torch.tensor([3, 1, 4])
    captions, text_to_image, named = split_captions(dataset, labels, per_image=2)
    assert text_to_image.tolist() == [0, 0, 1, 1, 2, 2] and named.tolist() == [3, 3, 1, 1, 4, 4]
    assert captions[2] == dataset.captioner.caption(1, 1, 0) and captions[5] == dataset.captioner.caption(2, 4, 1)
    assert DIGIT_CLASSNAMES[4] in captions[5]


def test_zeroshot_prompts():
    digits = DigitsDataset(split="val")
    names, templates, _ = class_prompts(digits, imagenet=False)
    assert names == list(DIGIT_CLASSNAMES) and templates == list(DIGIT_TEMPLATES)
    with pytest.raises(ValueError, match="1000-class"):
        class_prompts(digits, imagenet=True)
    fake_imagenet = SimpleNamespace(classnames=[f"n{i:08d}" for i in range(1000)])
    names, templates, source = class_prompts(fake_imagenet, imagenet=True)
    assert len(names) == 1000 and len(templates) == 80 and "OPENAI" in source
    assert templates[0]("dog") == "a bad photo of a dog."
