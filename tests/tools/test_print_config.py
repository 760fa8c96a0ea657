"""Command-line error path and ``tools/print_config.py``, run as a user runs them (subprocesses),
and ``print_config --defaults`` (every component's constructor defaults, marked).

The four commands start when this module is imported, so that their seconds of importing torch
overlap each other and this process's own import of the package; they are checked one by one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIP = "configs/quickstart/clip_vit_tiny_digits.yaml"
GOOD_OVERRIDES = ["optimizer.lr=1e-4", "epochs=3", "progress_bar=false", "grad_clip=null",
                  "transform.scale=[0.32,1.0]", "output_dir=out dir/x", "+note='1e-4'", "pipeline.vision.depth=2"]
COMMANDS = {
    "train_typo": ["tools/train.py", "-c", CLIP, "optimzer.lr=1"],
    "print_typo": ["tools/print_config.py", "-c", CLIP, "optimzer.lr=1"],
    "print_good": ["tools/print_config.py", "-c", CLIP, *GOOD_OVERRIDES],
    "print_defaults": ["tools/print_config.py", "-c", CLIP, "--defaults", "pipeline.vision.depth=2"],
}
_STARTED = {
    name: subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, args in COMMANDS.items()
}

import pytest  # noqa: E402
import yaml  # noqa: E402

from hirl_like.cli.print_config import main as print_config_main  # noqa: E402
from hirl_like.config import dump_config, load_config, to_dict, with_defaults  # noqa: E402


@pytest.fixture(scope="module")
def runs() -> dict[str, subprocess.CompletedProcess]:
    done = {}
    for name, proc in _STARTED.items():
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def assert_one_line_error(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, (run.returncode, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in run.stderr
    assert run.stdout == ""
    return lines[0]


@pytest.mark.parametrize("name", ["train_typo", "print_typo"])
def test_a_misspelt_key_ends_with_one_line_and_exit_code_2(runs, name):
    line = assert_one_line_error(runs[name])
    assert "unknown config key 'optimzer'" in line and "Did you mean 'optimizer'?" in line


def test_print_config_prints_the_resolved_yaml_with_overrides_applied(runs):
    run = runs["print_good"]
    assert run.returncode == 0, run.stderr
    printed = yaml.safe_load(run.stdout)
    assert printed["optimizer"]["lr"] == 1e-4 and printed["epochs"] == 3 and printed["progress_bar"] is False
    assert printed["grad_clip"] is None and printed["transform"]["scale"] == [0.32, 1.0]
    assert printed["output_dir"] == "out dir/x" and printed["+note"] == "1e-4"
    assert printed["pipeline"]["vision"]["depth"] == 2 and printed["pipeline"]["name"] == "CLIP"
    assert printed["optimizer"]["min_lr"] == 1e-6  # defaults under the file
    # exactly what the library resolves, and it loads back as a config file
    assert run.stdout == dump_config(load_config(ROOT / CLIP, GOOD_OVERRIDES))


def test_printed_config_is_a_valid_config_file(runs, tmp_path):
    path = tmp_path / "printed.yaml"
    path.write_text(runs["print_good"].stdout)
    assert dump_config(load_config(path)) == runs["print_good"].stdout


def test_print_config_defaults_shows_every_constructor_default_marked(runs, tmp_path):
    run = runs["print_defaults"]
    assert run.returncode == 0 and run.stderr == "", run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("# Resolved config. Lines marked '# default (X)'")
    # defaults of the ViT, the text tower, the data set, the transform and the CLIP pipeline's objective
    for line in ("    drop_path_rate: 0.0  # default (vit)", "    pos_embed: learned  # default (vit)",
                 "    mlp_ratio: 4.0  # default (text_transformer)", "  val_fraction: 0.2  # default (Digits)",
                 "  crops: 1  # default (RandomResizedCropTransform)", "  clip:  # default (clip)",
                 "    soft_temperature: 0.1  # default (clip)", "    max_logit_scale: 100.0  # default (clip)"):
        assert line in lines, line
    # what the config and the overrides set is not marked; the builder's own arguments are not shown
    assert "    depth: 2" in lines and "    patch_size: 8" in lines and "  image_size: 32" in lines
    assert not any(line.strip().startswith(("seed:", "transform:", "tokenizer:")) and "default" in line for line in lines)
    # it is a config file: it loads back to the config completed with the defaults
    path = tmp_path / "full.yaml"
    path.write_text(run.stdout)
    expected, _ = with_defaults(to_dict(load_config(ROOT / CLIP, ["pipeline.vision.depth=2"])))
    assert to_dict(load_config(path)) == expected


@pytest.mark.parametrize("config", ["harmony_vit_tiny_digits", "dino_vit_tiny_digits", "slip_vit_tiny_digits"])
def test_defaults_of_every_listed_objective_are_shown(config, capsys):
    print_config_main(["-c", f"{ROOT}/configs/quickstart/{config}.yaml", "--defaults"])
    printed = yaml.safe_load(capsys.readouterr().out)
    pipeline = printed["pipeline"]
    for objective in pipeline["objectives"]:
        assert isinstance(pipeline[objective], dict) and pipeline[objective], objective
    if config == "dino_vit_tiny_digits":  # not in the file: the constructor's values, which will run
        assert pipeline["dino"]["freeze_last_layer"] == 1.0 and pipeline["dino"]["student_temp"] == 0.1
        assert pipeline["ema_momentum_end"] == 1.0 and "clip" not in pipeline
