"""Generated out-of-range overrides across every group of keys are refused: no traceback, no silent
acceptance, one line, exit code 2 (issue 20 item 1).

The keys are every number a user can set: the leaves of the shipped configs completed with every
component's constructor defaults (``print_config --defaults``), for several pipelines, data sets and
transforms. What is invalid is stated here, independently of hirl_like/config/rules.py: a
negative, infinite or non-numeric value for every number (but the two logit offsets, which may be
negative), zero for sizes, counts, rates and temperatures, 1.5 for fractions, 1 for rates that
would drop or mask everything; then wrong lengths and orders of pairs, sizes that do not divide,
warm-ups longer than the run, unknown choices, duplicate YAML keys. Each case runs in-process
through ``load_config``; every tenth also through the ``print_config`` command's ``main`` under
``run_cleanly`` (exit code, stderr), and a sample as real ``tools/print_config.py`` subprocesses.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hirl_like.cli.common import run_cleanly
from hirl_like.cli.print_config import main as print_config_main
from hirl_like.config import ConfigError, load_config, to_dict, with_defaults

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "configs/quickstart"
CLIP, HARMONY, DINO = QUICK / "clip_vit_tiny_digits.yaml", QUICK / "harmony_vit_tiny_digits.yaml", QUICK / "dino_vit_tiny_digits.yaml"
# (config, overrides that pick other components): together they hold every kind of component node
BASES: list[tuple[Path, list[str]]] = [
    (CLIP, []), (HARMONY, []), (DINO, []), (QUICK / "maskclip_vit_tiny_digits.yaml", []), (QUICK / "slip_vit_tiny_digits.yaml", []),
    (CLIP, ["data.name=FashionMNIST", "data.limit=100", "data.holdout=10"]),
    (CLIP, ["data.name=WebDatasetShards", "data.urls=a.tar", "data.num_samples=10", "data.max_bad_samples=3"]),
    (CLIP, ["data.name=ImageFolder", "data.root=x"]), (CLIP, ["data.name=CsvCaptions", "data.path=x.csv"]),
    (CLIP, ["transform.name=EvalTransform", "transform.resize_size=40"]),
    (CLIP, ["max_iterations=100", "optimizer.name=sgd", "optimizer.momentum=0.9"]),
    (HARMONY, ["pipeline.ema_half_life=1"]),
]
NEGATIVE_OK = {"init_logit_bias", "init_logit_scale"}
ZERO_INVALID = {
    "epochs", "batch_size", "log_interval", "max_bad_steps", "max_iterations", "lr", "eps", "img_size", "patch_size",
    "image_size", "size", "global_size", "local_size", "resize_size", "depth", "layers", "heads", "width", "embed_dim",
    "vocab_size", "context_length", "mlp_ratio", "out_dim", "patch_out_dim", "head_hidden_dim", "head_bottleneck_dim",
    "head_nlayers", "decoder_dim", "decoder_depth", "decoder_heads", "decoder_width", "crops", "teacher_temp",
    "warmup_teacher_temp", "student_temp", "teacher_patch_temp", "warmup_teacher_patch_temp", "soft_temperature",
    "temperature", "max_logit_scale", "mask_ratio", "mask_prob", "val_fraction", "min_aspect", "limit", "num_samples",
    "caption_reservoir", "hidden_dims",
}
FRACTIONS = {  # 1.5 is out of range
    "hflip", "color_jitter_p", "caption_noise", "max_bad_fraction", "val_fraction", "drop_path_rate", "mask_ratio",
    "mask_prob", "ema_momentum", "ema_momentum_end", "center_momentum", "center_momentum2", "hard_labels_weight_end",
    "min_aspect", "momentum", "pred_ratio", "pred_ratio_var", "betas", "image_mask_ratio", "mask_ratio_schedule", "mean",
}
ONE_INVALID = {"drop_path_rate", "mask_ratio", "mask_prob", "val_fraction", "momentum", "image_mask_ratio"}
SPANS = {"warmup_epochs", "warmup_teacher_temp_epochs", "freeze_last_layer", "hard_labels_weight_epochs", "ema_half_life", "knn_every"}


def leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        full = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            yield from leaves(value, full)
        else:
            yield full, value


def group(path: str) -> str:
    parts = path.split(".")
    if len(parts) == 1:
        return "top-level"
    if parts[0] == "pipeline" and len(parts) > 2:
        return f"pipeline.{parts[1]}" if parts[1] in ("vision", "text") else "objectives"
    return parts[0]


def numbers() -> dict[str, tuple[Path, list[str], Any]]:
    """{dotted key: (config, overrides, value)} for every number of every base (lists: their first item)."""
    found: dict[str, tuple[Path, list[str], Any]] = {}
    for config, overrides in BASES:
        filled, _ = with_defaults(to_dict(load_config(config, overrides)))
        for path, value in leaves(filled):
            if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
                value = value[0]  # pairs and lists of numbers: each element out of range
                path = f"{path}[]"
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found.setdefault(path, (config, overrides, value))
    return found


def element(path: str, value: str, current: list[Any] | None = None) -> str:
    """``key=value`` for a scalar, ``key=[value, ...rest]`` for an element of a list key."""
    if not path.endswith("[]"):
        return f"{path}={value}"
    rest = [str(v) for v in (current or [])[1:]]
    return f"{path[:-2]}=[{', '.join([value, *rest])}]"


def generated() -> list[tuple[str, Path, list[str]]]:
    """(key, config, overrides) of every malformed case; ``key`` is what the refusal must name."""
    cases: list[tuple[str, Path, list[str]]] = []
    for path, (config, overrides, value) in sorted(numbers().items()):
        key = path.removesuffix("[]")
        name = key.rsplit(".", 1)[-1]
        current = None
        if path.endswith("[]"):
            node: Any = to_dict(load_config(config, overrides))
            node, _ = with_defaults(node)
            for part in key.split("."):
                node = node[part]
            current = node
        bad = [".inf", ".nan", "'abc'"] + ([] if name in NEGATIVE_OK else ["-1"])
        bad += ["0"] * (name in ZERO_INVALID) + ["1.5"] * (name in FRACTIONS) + ["1.0"] * (name in ONE_INVALID)
        if isinstance(value, int) and name not in NEGATIVE_OK | SPANS:
            bad.append("2.5")  # a count that is not whole (epoch spans take fractions)
        cases += [(key, config, [*overrides, element(path, b, current)]) for b in dict.fromkeys(bad)]
    structural = [
        ("optimizer.betas", CLIP, ["optimizer.betas=[0.9]"]), ("optimizer.betas", CLIP, ["optimizer.betas=[0.9, 0.98, 0.99]"]),
        ("optimizer.betas", CLIP, ["optimizer.betas=[]"]), ("transform.scale", CLIP, ["transform.scale=[0.9, 0.5]"]),
        ("transform.scale", CLIP, ["transform.scale=[0.5]"]), ("transform.scale", CLIP, ["transform.scale=[0, 1]"]),
        ("transform.global_scale", DINO, ["transform.global_scale=[1.0, 0.5]"]),
        ("transform.local_scale", DINO, ["transform.local_scale=[0.05, 1.5]"]),
        ("transform.mean", CLIP, ["transform.mean=[0.5, 0.5]"]), ("transform.std", CLIP, ["transform.std=[0.2, 0, 0.2]"]),
        ("pipeline.simclr.hidden_dims", QUICK / "slip_vit_tiny_digits.yaml", ["pipeline.simclr.hidden_dims=[256, 0]"]),
        ("patch_size", CLIP, ["pipeline.vision.patch_size=5"]), ("img_size", CLIP, ["pipeline.vision.img_size=30"]),
        ("patch_size", CLIP, ["pipeline.vision.img_size=64", "pipeline.vision.patch_size=7"]),
        ("pipeline.text.heads", CLIP, ["pipeline.text.heads=3"]), ("pipeline.text.width", CLIP, ["pipeline.text.width=130"]),
        ("pipeline.embed_dim", CLIP, ["pipeline.embed_dim=64"]),
        ("pipeline.ibot.out_dim", HARMONY, ["pipeline.ibot.out_dim=512"]),
        ("pipeline.mae.decoder_heads", HARMONY, ["pipeline.mae.decoder_heads=3"]),
        ("pipeline.mae.decoder_dim", HARMONY, ["pipeline.mae.decoder_dim=130", "pipeline.mae.decoder_heads=1"]),
        ("pipeline.mlm.decoder_heads", HARMONY, ["pipeline.mlm.decoder_heads=3"]),
        ("global_crops", DINO, ["transform.global_crops=0"]),
        ("optimizer.warmup_epochs", CLIP, ["optimizer.warmup_epochs=9"]),
        ("optimizer.warmup_epochs", CLIP, ["epochs=2", "optimizer.warmup_epochs=3"]),
        ("warmup_teacher_temp_epochs", HARMONY, ["pipeline.ibot.warmup_teacher_temp_epochs=13"]),
        ("warmup_teacher_temp_epochs", DINO, ["pipeline.objectives=[ibot]", "epochs=2"]),
        ("freeze_last_layer", DINO, ["pipeline.dino.freeze_last_layer=31"]),
        ("freeze_last_layer", DINO, ["pipeline.dino.freeze_last_layer='101%'"]),
        ("hard_labels_weight_epochs", HARMONY, ["pipeline.clip.hard_labels_weight_epochs='half'"]),
        ("precision", CLIP, ["precision=fp8"]), ("device", CLIP, ["device=gpu"]), ("grad_clip_mode", CLIP, ["grad_clip_mode=layer"]),
        ("optimizer.name", CLIP, ["optimizer.name=adam"]), ("arch", CLIP, ["pipeline.vision.arch=vit_huge"]),
        ("pos_embed", CLIP, ["pipeline.vision.pos_embed=rope"]), ("split", CLIP, ["data.split=tarin"]),
        ("norm", QUICK / "slip_vit_tiny_digits.yaml", ["pipeline.simclr.norm=gn"]),
        ("objectives", HARMONY, ["pipeline.objectives=[]"]), ("objectives", HARMONY, ["pipeline.objectives=clip_nope"]),
        ("objectives", HARMONY, ["pipeline.objectives={clip: 0}"]), ("output_dir", CLIP, ["output_dir=' '"]),
        ("root", CLIP, ["data.name=ImageFolder", "data.root=''"]), ("urls", CLIP, ["data.name=WebDatasetShards", "data.urls=[]"]),
        ("optimizer.nesterov", CLIP, ["optimizer.name=sgd", "optimizer.nesterov=1"]),
        ("optimizer.fused", CLIP, ["optimizer.fused=always"]), ("betas", CLIP, ["optimizer.name=sgd", "+optimizer.betas=[0.9, 0.9]"]),
        ("vision", HARMONY, ["pipeline.name=CLIP", "pipeline.vision.depth=2"]),
        ("seed", CLIP, ["+data.seed=1"]), ("image_size", CLIP, ["data.image_size=28", "data.name=CsvCaptions"]),
        ("lr", CLIP, ["optimizer={lr: 1, lr: 2}"]), ("depth", CLIP, ["pipeline.vision={name: vit, depth: 2, depth: 3}"]),
        ("a", CLIP, ["+x={a: 1, a: 1}"]),
    ]
    return cases + structural


CASES = generated()


def test_enough_cases_in_every_group():
    assert len(CASES) >= 300
    counts = Counter(group(key if "." in key else overrides[-1].split("=")[0]) for key, _, overrides in CASES)
    for name in ("top-level", "optimizer", "data", "transform", "pipeline.vision", "pipeline.text", "objectives", "pipeline"):
        assert counts[name] >= 8, counts
    assert len({(str(c), tuple(o)) for _, c, o in CASES}) == len(CASES)


def refusal(key: str, config: Path, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:  # exactly this type: nothing escapes from deeper down
        load_config(config, overrides)
    message = str(info.value)
    assert key.rsplit(".", 1)[-1] in message and len(message) < 600 and "\n" not in message, message
    return message


@pytest.mark.parametrize("key, config, overrides", CASES, ids=[f"{c.stem}:{' '.join(o)}" for _, c, o in CASES])
def test_refused_in_one_line(key, config, overrides):
    refusal(key, config, overrides)


@pytest.mark.parametrize("key, config, overrides", CASES[::10], ids=[f"{c.stem}:{' '.join(o)}" for _, c, o in CASES[::10]])
def test_print_config_ends_with_the_same_line_and_exit_code_2(key, config, overrides, capsys):
    message = refusal(key, config, overrides)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cleanly(print_config_main, ["-c", str(config), *overrides])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and out == "" and err == f"error: {message}\n", (exit_info.value.code, out, err)


SUBPROCESS_SAMPLE = [  # a range, a relation and a duplicate key, run as a user runs them (~3 s each)
    ["batch_size=0"], ["pipeline.vision.patch_size=5"], ["optimizer={lr: 1, lr: 2}"],
]


def test_print_config_subprocesses_end_with_one_line_and_exit_code_2():
    procs = [subprocess.Popen([sys.executable, "tools/print_config.py", "-c", str(CLIP), *o], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for o in SUBPROCESS_SAMPLE]
    for overrides, proc in zip(SUBPROCESS_SAMPLE, procs):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 2 and out == "", (overrides, proc.returncode, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert overrides[0].split("=")[0].split(".")[-1] in err
