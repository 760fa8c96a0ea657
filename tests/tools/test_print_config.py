"""Command-line error path and ``tools/print_config.py``, run as a user runs them (subprocesses).

The three commands start when this module is imported, so that their seconds of importing torch
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
}
_STARTED = {
    name: subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, args in COMMANDS.items()
}

import pytest  # noqa: E402
import yaml  # noqa: E402

from hirl_like.config import dump_config, load_config  # noqa: E402


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
