"""tools/compare.py end to end at tiny size: the shipped digits comparison with 2-iteration runs.

A third method with an override its config does not accept must become a 'failed' row, not a
crashed comparison; a second invocation must reuse every training run and evaluation.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hirl_like.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
COMPARE_DEFAULTS = ROOT / "tools" / "compare_defaults.yaml"
TINY = "[epochs=1, max_iterations=2, batch_size=32, seed=0, num_workers=0, progress_bar=false, tensorboard=false]"


@pytest.mark.parametrize("file", sorted((ROOT / "configs" / "compare").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_comparisons_load_and_name_existing_configs(file):
    cfg = load_config(file, defaults=COMPARE_DEFAULTS)
    assert cfg.methods
    for method in cfg.methods:
        assert (ROOT / method["config"]).is_file(), method["config"]
        load_config(ROOT / method["config"], [*cfg.shared, *method.get("overrides", [])])


def _compare(spec: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "tools" / "compare.py"), "-c", str(spec), f"output_dir={out}", f"shared={TINY}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tiny_comparison_writes_tables_marks_failures_and_resumes(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "methods:\n"
        "  - {label: CLIP, config: configs/quickstart/clip_vit_tiny_digits.yaml}\n"
        "  - {label: MAE, config: configs/quickstart/mae_vit_tiny_digits.yaml}\n"
        "  - {label: Broken, config: configs/quickstart/clip_vit_tiny_digits.yaml, overrides: [pipeline.vision.depthh=2]}\n"
        "evaluate: [knn, linear, zeroshot]\n"
        "evaluations: {knn: [--compare_random_init], linear: [--epochs, '2', --compare_random_init]}\n"
    )
    out = tmp_path / "out"
    proc = _compare(spec, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "results.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"method", "CLIP", "MAE", "Broken", "random init (CLIP's network)"}
    assert "**" not in rows["random init (CLIP's network)"]  # a reference, never the best
    assert "failed in training" in rows["Broken"] and "depthh" in rows["Broken"]
    assert "k-NN top-1 (k=20)" in rows["method"] and "zero-shot top-1" in rows["method"]
    assert "clustering NMI" not in rows["method"]  # only the evaluations listed under `evaluate` run
    assert "time vs CLIP" in rows["method"] and "peak memory vs CLIP" in rows["method"]
    assert rows["CLIP"].count("1.00x") == 2  # the baseline row against itself
    random_cells = [c.strip() for c in rows["random init (CLIP's network)"].split("|")]
    linear_at = [c.strip() for c in rows["method"].split("|")].index("linear top-1")
    assert random_cells[linear_at] != "—"  # linear ran with --compare_random_init: a reference figure too
    assert "**" in table  # the best value of each column is marked
    with open(out / "results.csv", newline="") as f:
        records = {r["method"]: r for r in csv.DictReader(f)}
    assert 0.0 <= float(records["CLIP"]["zero-shot top-1"]) <= 100.0
    assert records["MAE"]["zero-shot top-1"] == ""  # no text tower: zero-shot is not run
    assert float(records["MAE"]["k-NN top-1 (k=20)"]) >= 0.0
    assert (out / "results.png").stat().st_size > 1000
    assert json.loads((out / "CLIP" / "train_done.json").read_text())["wall_time_s"] > 0

    first_knn = (out / "CLIP" / "eval_knn.json").stat().st_mtime
    again = _compare(spec, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "CLIP" / "eval_knn.json").stat().st_mtime == first_knn  # reused, not recomputed
    assert "training reused" in (out / "results.md").read_text()

    # a changed evaluation flag re-runs that evaluation (and only it); the old figures are not reused
    spec.write_text(spec.read_text().replace("linear: [--epochs, '2',", "linear: [--epochs, '3',"))
    assert "linear: [--epochs, '3'," in spec.read_text()
    first_linear = json.loads((out / "CLIP" / "eval_linear.json").read_text())
    third = _compare(spec, out)
    assert third.returncode == 0, third.stderr[-3000:]
    assert (out / "CLIP" / "eval_knn.json").stat().st_mtime == first_knn
    assert json.loads((out / "CLIP" / "eval_linear.json").read_text()) != first_linear


def test_student_evaluate_runs_the_students_and_adds_their_columns(tmp_path, monkeypatch):
    """`student_evaluate: [knn]` runs eval_knn.py again with --towers student (and without the
    random-init reference) and reads eval_knn_student.json into a '(students)' column."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_tool", ROOT / "tools" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "compare_tool", compare)  # dataclasses look their module up
    spec.loader.exec_module(compare)
    out = tmp_path / "run"
    out.mkdir()
    (out / "main_vit_checkpoint.pth").write_bytes(b"")
    commands = []

    def fake_run(cmd, log):
        commands.append(cmd)
        student = "--towers" in cmd
        top1 = 70.0 if student else 60.0
        results = {"pretrained": {"20": {"top1": top1}}}
        if not student:
            results["random init"] = {"20": {"top1": 50.0}}
        (out / ("eval_knn_student.json" if student else "eval_knn.json")).write_text(json.dumps({"results": results}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(compare, "run", fake_run)
    (tmp_path / "spec.yaml").write_text("methods: []\n")
    cfg = load_config(tmp_path / "spec.yaml", ["evaluate=[knn]", "student_evaluate=[knn]", "evaluations.knn=[--compare_random_init]"],
                      defaults=COMPARE_DEFAULTS)
    result = compare.MethodResult("Harmony")
    compare.evaluate_method(cfg, result, out)
    assert len(commands) == 2
    assert "--compare_random_init" in commands[0] and "--towers" not in commands[0]
    assert "--compare_random_init" not in commands[1]
    assert commands[1][commands[1].index("--towers") + 1] == "student"
    assert result.figures == {"k-NN top-1 (k=20)": 60.0, "k-NN top-1 (k=20) (students)": 70.0}
    assert result.random_init_figures == {"k-NN top-1 (k=20)": 50.0}
    compare.report(cfg, [result], tmp_path, "t")
    header = (tmp_path / "results.md").read_text().splitlines()[2]
    assert "k-NN top-1 (k=20) | k-NN top-1 (k=20) (students)" in header


def test_random_init_columns_put_each_rows_own_untrained_network_beside_it(tmp_path, monkeypatch):
    """`random_init_columns: true` (methods of different networks): no shared reference row; each
    row carries its own random-init k-NN in a column beside the trained one, never marked best."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_tool", ROOT / "tools" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "compare_tool", compare)
    spec.loader.exec_module(compare)
    (tmp_path / "spec.yaml").write_text("methods: []\n")
    cfg = load_config(tmp_path / "spec.yaml", ["evaluate=[knn]", "random_init_columns=true"], defaults=COMPARE_DEFAULTS)
    column = "k-NN top-1 (k=20)"
    resnet = compare.MethodResult("SimSiam", figures={column: 60.0}, random_init_figures={column: 90.0})
    vit = compare.MethodResult("DINO", figures={column: 70.0}, random_init_figures={column: 50.0})
    compare.report(cfg, [resnet, vit], tmp_path, "t")
    lines = (tmp_path / "results.md").read_text().splitlines()
    assert f"| method | {column} | {column} (its random init) |" in lines[2]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]] for line in lines[4:] if line.startswith("| ")}
    assert rows == {"SimSiam": ["60.00", "90.00"], "DINO": ["**70.00**", "50.00"]}


def test_finetune_semisup_and_segmentation_columns_run_their_scripts_and_read_their_reports(tmp_path, monkeypatch):
    """semisup runs eval_finetune.py with its label fraction and reads eval_semisup_<F>.json;
    segmentation's report maps each model to its figures, as k-NN's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_tool", ROOT / "tools" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "compare_tool", compare)
    spec.loader.exec_module(compare)
    out = tmp_path / "run"
    out.mkdir()
    (out / "main_vit_checkpoint.pth").write_bytes(b"")
    scripts = []

    def fake_run(cmd, log):
        script = cmd[cmd.index("--launch") + 1]
        scripts.append(script)
        if script.endswith("eval_segmentation.py"):
            (out / "eval_segmentation.json").write_text(json.dumps(
                {"results": {"pretrained": {"miou": 41.0}, "random init": {"miou": 20.0}}}))
        elif "--label_fraction" in cmd:
            (out / "eval_semisup_0.01.json").write_text(json.dumps({"results": {"test_top1": 55.0}}))
        else:
            (out / "eval_finetune.json").write_text(json.dumps({"results": {"test_top1": 80.0},
                                                                 "random_init": {"test_top1": 70.0}}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(compare, "run", fake_run)
    (tmp_path / "spec.yaml").write_text("methods: []\n")
    cfg = load_config(tmp_path / "spec.yaml", ["evaluate=[finetune,semisup,segmentation]",
                                               "evaluations.semisup=[--label_fraction,'0.01']"], defaults=COMPARE_DEFAULTS)
    result = compare.MethodResult("MAE")
    compare.evaluate_method(cfg, result, out)
    assert scripts == ["eval_common/eval_finetune.py", "eval_common/eval_finetune.py", "eval_common/eval_segmentation.py"]
    assert result.figures == {"fine-tune top-1": 80.0, "label-fraction fine-tune top-1": 55.0, "segmentation mIoU": 41.0}
    assert result.random_init_figures == {"fine-tune top-1": 70.0, "segmentation mIoU": 20.0}
    bad = load_config(tmp_path / "spec.yaml", ["evaluate=[semisup]", "evaluations.semisup=[--epochs,'3']"],
                      defaults=COMPARE_DEFAULTS)
    with pytest.raises(ConfigError, match="--label_fraction"):
        compare.evaluate_method(bad, compare.MethodResult("MAE"), out)
