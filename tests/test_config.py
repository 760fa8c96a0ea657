"""Configs: YAML typing, _base_ inheritance, strict keys and types, component nodes, saving, safety."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from hirl_like.config import (
    ConfigError,
    dump_config,
    load_config,
    parse_value,
    read_yaml,
    save_config,
    split_override,
    to_dict,
)

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "configs/quickstart/clip_vit_tiny_digits.yaml"
HARMONY = ROOT / "configs/quickstart/harmony_vit_tiny_digits.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# typing of values
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("false", False), ("true", True), ("null", None), ("~", None),
        ("1e-4", 1e-4), ("1e4", 1e4), ("1.5E-3", 1.5e-3), ("-2.5e+2", -250.0), ("5.0e-4", 5e-4), ("0.5", 0.5),
        ("3", 3), ("-2", -2), ("0", 0),
        ("[0.32,1.0]", [0.32, 1.0]), ("[0.32, 1.0]", [0.32, 1.0]), ("[clip, ibot]", ["clip", "ibot"]), ("[]", []),
        ("{a: 1, b: [x]}", {"a": 1, "b": ["x"]}),
        ("'a b'", "a b"), ('"a b"', "a b"), ("a b", "a b"), ("''", ""), ("'1e-4'", "1e-4"), ("'false'", "false"),
        ("vit_tiny", "vit_tiny"), ("output/run", "output/run"),
        ("2024-01-01", "2024-01-01"),  # dates stay text (OmegaConf cannot hold a datetime.date)
    ],
)
def test_values_are_typed_as_yaml_types_them(text, expected):
    value = parse_value(text)
    assert value == expected
    assert type(value) is type(expected)  # 1e4 is a float, not the string '1e4'; 3 is not 3.0


def test_overrides_are_typed_in_the_loaded_config():
    cfg = load_config(CLIP, [
        "optimizer.lr=1e-4", "optimizer.eps=1e-8", "progress_bar=false", "grad_clip=null", "epochs=3",
        "transform.scale=[0.32,1.0]", "output_dir='out dir/with space'", "+note=1.5E-3", "+tags=[a, 'b c']",
    ])
    assert cfg.optimizer.lr == 1e-4 and type(cfg.optimizer.lr) is float
    assert type(cfg.optimizer.eps) is float
    assert cfg.progress_bar is False
    assert cfg.grad_clip is None
    assert cfg.epochs == 3 and type(cfg.epochs) is int
    assert list(cfg.transform.scale) == [0.32, 1.0]
    assert cfg.output_dir == "out dir/with space"
    assert cfg.note == 1.5e-3
    assert list(cfg.tags) == ["a", "b c"]


def test_split_override():
    assert split_override("optimizer.lr=1e-3") == ("optimizer.lr", "1e-3")
    assert split_override("+new.key=a=b") == ("+new.key", "a=b")  # only the first '=' splits
    with pytest.raises(ConfigError, match="has no '='"):
        split_override("optimizer.lr")
    with pytest.raises(ConfigError, match="is not a valid key"):
        split_override("optimizer-lr=1")


# --------------------------------------------------------------------------------------------
# _base_ inheritance
# --------------------------------------------------------------------------------------------
def test_base_with_a_relative_path(tmp_path):
    write(tmp_path / "base/common.yaml", "epochs: 5\nbatch_size: 16\noptimizer:\n  lr: 0.01\n")
    child = write(tmp_path / "methods/a/child.yaml", "_base_: ../../base/common.yaml\nbatch_size: 32\n")
    cfg = load_config(child)
    assert (cfg.epochs, cfg.batch_size, cfg.optimizer.lr) == (5, 32, 0.01)
    assert cfg.optimizer.min_lr == 1e-6  # package defaults under everything
    assert "_base_" not in cfg


def test_base_list_later_bases_win_and_the_file_wins_over_all(tmp_path):
    write(tmp_path / "a.yaml", "epochs: 1\nseed: 1\nbatch_size: 1\n")
    write(tmp_path / "b.yaml", "epochs: 2\nseed: 2\n")
    child = write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\nepochs: 3\n")
    cfg = load_config(child)
    assert (cfg.batch_size, cfg.seed, cfg.epochs) == (1, 2, 3)


def test_chain_of_three_bases(tmp_path):
    write(tmp_path / "one.yaml", "epochs: 1\nseed: 1\nbatch_size: 1\nnum_workers: 1\n")
    write(tmp_path / "two.yaml", "_base_: one.yaml\nseed: 2\nbatch_size: 2\nnum_workers: 2\n")
    write(tmp_path / "three.yaml", "_base_: two.yaml\nbatch_size: 3\nnum_workers: 3\n")
    top = write(tmp_path / "top.yaml", "_base_: three.yaml\nnum_workers: 4\n")
    cfg = load_config(top, ["log_interval=7"])
    assert (cfg.epochs, cfg.seed, cfg.batch_size, cfg.num_workers, cfg.log_interval) == (1, 2, 3, 4, 7)


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\nepochs: 1\n")
    write(tmp_path / "b.yaml", "_base_: c.yaml\n")
    write(tmp_path / "c.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match=r"_base_ cycle: .*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")


def test_self_base_is_a_cycle(tmp_path):
    with pytest.raises(ConfigError, match="_base_ cycle"):
        load_config(write(tmp_path / "a.yaml", "_base_: a.yaml\n"))


def test_missing_base_names_it(tmp_path):
    child = write(tmp_path / "child.yaml", "_base_: [nope/missing_base.yaml]\nepochs: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(child)
    message = str(info.value)
    assert "_base_ file not found: nope/missing_base.yaml" in message
    assert str(tmp_path / "nope/missing_base.yaml") in message


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*absent.yaml"):
        load_config(tmp_path / "absent.yaml")


def test_without_defaults_the_deepest_file_defines_the_keys(tmp_path):
    write(tmp_path / "base.yaml", "a: 1\nnode: {b: x}\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\na: 2\n")
    assert to_dict(load_config(child, ["node.b=y"], defaults=None)) == {"a": 2, "node": {"b": "y"}}
    with pytest.raises(ConfigError, match="unknown config key 'c'"):
        load_config(child, ["c=1"], defaults=None)


def test_every_shipped_training_config_loads():
    # configs/compare/ holds comparison specs (tools/compare.py's schema), tested in tests/tools;
    # configs/downstream/ holds protocol specs (hirl_like.cli.downstream), tested in tests/cli.
    files = sorted(f for f in (ROOT / "configs").rglob("*.yaml")
                   if not {"compare", "downstream"} & set(f.relative_to(ROOT / "configs").parts))
    assert len(files) >= 4
    for file in files:
        cfg = load_config(file)
        assert {"output_dir", "seed", "epochs", "batch_size"} <= set(cfg) and {"name", "lr"} <= set(cfg.optimizer)


# --------------------------------------------------------------------------------------------
# component nodes
# --------------------------------------------------------------------------------------------
def test_a_component_renamed_in_a_child_file_is_replaced_not_merged(tmp_path):
    base = write(tmp_path / "base.yaml", "transform:\n  name: RandomResizedCropTransform\n  size: 32\n  scale: [0.6, 1.0]\n  hflip: 0.0\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\ntransform:\n  name: MultiCropTransform\n  local_crops: 2\n")
    assert to_dict(load_config(child).transform) == {"name": "MultiCropTransform", "local_crops": 2}
    # the same name merges
    same = write(tmp_path / "same.yaml", "_base_: base.yaml\ntransform:\n  name: RandomResizedCropTransform\n  size: 16\n")
    assert to_dict(load_config(same).transform) == {"name": "RandomResizedCropTransform", "size": 16, "scale": [0.6, 1.0], "hflip": 0.0}
    assert load_config(base).transform.size == 32
    # the quickstart replaces the defaults' MultiCropTransform: none of its arguments leak in
    assert set(load_config(CLIP).transform) == {"name", "size", "scale", "hflip"}


def test_override_of_a_name_replaces_the_node_and_later_overrides_fill_it():
    cfg = load_config(CLIP, ["transform.name=MultiCropTransform", "transform.local_crops=2", "transform.global_size=32"])
    assert to_dict(cfg.transform) == {"name": "MultiCropTransform", "local_crops": 2, "global_size": 32}
    cfg = load_config(CLIP, ["optimizer.name=sgd", "optimizer.momentum=0.8", "optimizer.lr=0.1"])
    assert to_dict(cfg.optimizer) == {"name": "sgd", "momentum": 0.8, "lr": 0.1}
    # an override of the same name (or an alias of the same entry) merges
    cfg = load_config(CLIP, ["pipeline.vision.name=VisionTransformer", "pipeline.vision.depth=2"])
    assert (cfg.pipeline.vision.arch, cfg.pipeline.vision.depth, cfg.pipeline.vision.patch_size) == ("vit_tiny", 2, 8)


def test_a_renamed_component_must_exist_in_the_same_registry():
    with pytest.raises(ConfigError) as info:
        load_config(CLIP, ["pipeline.vision.name=vitt"])
    assert "MODELS registry has no entry 'vitt'. Did you mean 'vit'?" in str(info.value)
    with pytest.raises(ConfigError, match="DATASETS registry has no entry 'Digitz'. Did you mean 'Digits'"):
        load_config(CLIP, ["data.name=Digitz"])


def test_a_key_that_is_not_a_constructor_argument_names_the_accepted_parameters():
    with pytest.raises(ConfigError) as info:
        load_config(CLIP, ["pipeline.vision.dpth=4"])
    message = str(info.value)
    assert "pipeline.vision (MODELS 'vit')" in message
    assert "hirl_like.models.vit:VisionTransformer" in message
    assert "unknown argument 'dpth'. Did you mean 'depth'?" in message
    assert "It accepts: arch, img_size, patch_size" in message and "depth" in message


def test_a_constructor_argument_in_a_file_is_checked_too(tmp_path):
    child = write(tmp_path / "c.yaml", f"_base_: {CLIP}\npipeline:\n  text: {{heads: 4, layerz: 2}}\n")
    with pytest.raises(ConfigError, match="pipeline.text .*unknown argument 'layerz'. Did you mean 'layers'"):
        load_config(child)


def test_component_argument_types_follow_the_constructor_annotations():
    with pytest.raises(ConfigError, match="argument 'depth' expects int \\| None, got str 'abc'"):
        load_config(CLIP, ["pipeline.vision.depth=abc"])
    with pytest.raises(ConfigError, match="argument 'scale' expects Sequence\\[float\\], got list \\['a', 'b'\\]"):
        load_config(CLIP, ["transform.scale=[a, b]"])
    assert load_config(CLIP, ["pipeline.vision.depth=null"]).pipeline.vision.depth is None  # default None
    # a union annotation takes each of its forms
    harmony = load_config(HARMONY, ["pipeline.objectives={clip: 1.0, ibot: 0.5}"])
    assert to_dict(harmony.pipeline)["objectives"] == {"clip": 1.0, "ibot": 0.5}
    assert load_config(HARMONY, ["pipeline.objectives=clip_ibot"]).pipeline.objectives == "clip_ibot"


def test_a_misspelt_objective_argument_is_refused_at_load_time():
    with pytest.raises(ConfigError, match=r"pipeline\.ibot.*unknown argument 'out_dimm'.*Did you mean 'out_dim'"):
        load_config(HARMONY, ["pipeline.ibot.out_dimm=64"])
    with pytest.raises(ConfigError, match="unknown argument 'ibott'.*did you mean 'ibot'"):
        load_config(HARMONY, ["+pipeline.ibott={out_dim: 64}"])
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(HARMONY, ["+pipeline.simclr=3"])


# --------------------------------------------------------------------------------------------
# strict keys and types
# --------------------------------------------------------------------------------------------
def test_unknown_key_on_the_command_line_suggests_the_closest():
    with pytest.raises(ConfigError) as info:
        load_config(CLIP, ["optimzer.lr=1"])
    message = str(info.value)
    assert "unknown config key 'optimzer'. Did you mean 'optimizer'?" in message
    assert "+optimzer=VALUE" in message
    with pytest.raises(ConfigError, match="unknown config key 'optimizer.lrr'. Did you mean 'lr'"):
        load_config(CLIP, ["optimizer.lrr=1"])


def test_unknown_key_in_a_file_suggests_the_closest(tmp_path):
    child = write(tmp_path / "bad.yaml", f"_base_: {CLIP}\nepoch: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(child)
    assert str(tmp_path / "bad.yaml") in str(info.value)
    assert "unknown config key 'epoch'. Did you mean 'epochs'?" in str(info.value)
    nested = write(tmp_path / "nested.yaml", "optimizer:\n  weight_decay_ned: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'optimizer.weight_decay_ned'. Did you mean 'weight_decay_end'"):
        load_config(nested)


def test_plus_adds_a_key_on_the_command_line_and_in_files(tmp_path):
    cfg = load_config(CLIP, ["+note=hello", "+optimizer.fused=false", "+extra={a: 1}"])
    assert cfg.note == "hello" and cfg.optimizer.fused is False and cfg.extra.a == 1
    child = write(tmp_path / "c.yaml", "+run_name: x\noptimizer:\n  +fused: true\n")
    cfg = load_config(child)
    assert cfg.run_name == "x" and cfg.optimizer.fused is True and "+run_name" not in cfg
    with pytest.raises(ConfigError, match="unknown config key 'optimizer.fused'"):
        load_config(CLIP, ["optimizer.fused=false"])
    with pytest.raises(ConfigError, match="unknown config key 'newnode'"):  # only the last part may be new
        load_config(CLIP, ["+newnode.key=1"])


def test_values_keep_the_default_type():
    with pytest.raises(ConfigError) as info:
        load_config(CLIP, ["epochs=abc"])
    assert "epochs expects int" in str(info.value) and "got str 'abc'" in str(info.value)
    for bad in ("epochs=1.5", "epochs=true", "progress_bar=1", "output_dir=3", "optimizer.betas=0.9",
                "optimizer.betas=[0.9, high]", "precision=off", "seed=null", "optimizer.lr=null"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(CLIP, [bad])
    cfg = load_config(CLIP, ["optimizer.lr=1", "grad_clip=null", "max_iterations=100", "optimizer.warmup_epochs=0.5"])
    assert cfg.optimizer.lr == 1 and cfg.grad_clip is None and cfg.max_iterations == 100
    assert cfg.optimizer.warmup_epochs == 0.5


def test_wrong_nesting_is_refused():
    with pytest.raises(ConfigError, match="optimizer is a mapping"):
        load_config(CLIP, ["optimizer=3", "optimizer.lr=1"])
    with pytest.raises(ConfigError, match="optimizer.lr is float 0.001, not a mapping, so it has no key 'x'"):
        load_config(CLIP, ["optimizer.lr.x=1"])
    with pytest.raises(ConfigError, match="pipeline.vision is a mapping"):
        load_config(CLIP, ["pipeline.vision=vit"])
    with pytest.raises(ConfigError, match="optimizer.name is str 'adamw', not a mapping, so it has no key 'x'"):
        load_config(CLIP, ["optimizer.name.x=1"])  # a key below a name is not a new component's name


def test_files_and_overrides_merge_by_the_same_rules(tmp_path):
    write(tmp_path / "base.yaml", "a: 1\nnode: {b: 2.0}\nopt: {name: adamw, lr: 0.1}\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\nnode: {b: 3}\n")  # an int where a float was
    assert to_dict(load_config(child, defaults=None)) == {"a": 1, "node": {"b": 3}, "opt": {"name": "adamw", "lr": 0.1}}
    bad = write(tmp_path / "bad.yaml", "_base_: base.yaml\nnode: {c: 1}\n")
    with pytest.raises(ConfigError, match="unknown config key 'node.c'") as info:
        load_config(bad, defaults=None)
    assert str(info.value).startswith(f"{bad}: ")
    cfg = load_config(tmp_path / "base.yaml", ["node.b=0.5", "+c=[1]", "opt.name=sgd", "opt.momentum=0.9"], defaults=None)
    assert to_dict(cfg) == {"a": 1, "node": {"b": 0.5}, "opt": {"name": "sgd", "momentum": 0.9}, "c": [1]}
    with pytest.raises(ConfigError, match="override 'node.c=1': unknown config key 'node.c'"):
        load_config(tmp_path / "base.yaml", ["node.c=1"], defaults=None)


# --------------------------------------------------------------------------------------------
# saving and printing
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, overrides", [
    (CLIP, []),
    (HARMONY, ["optimizer.lr=1e-4", "pipeline.vision.depth=2", "grad_clip=null", "+optimizer.fused=false"]),
    (CLIP, ["+note='1e-4'", "+day='2024-01-01'", "+flag='true'", "output_dir='a b/c'", "+extra={k: [1, 'x y']}",
            "transform.name=EvalTransform", "transform.size=32",
            "optimizer.name=sgd", "optimizer.momentum=0.9", "optimizer.lr=0.1"]),
])
def test_saved_config_reloads_identically(tmp_path, config, overrides):
    cfg = load_config(config, overrides)
    save_config(cfg, tmp_path / "run/config.yaml")
    assert not (tmp_path / "run/config.yaml.tmp").exists()
    text = (tmp_path / "run/config.yaml").read_text()
    assert "!!" not in text  # plain YAML, no python tags
    reloaded = load_config(tmp_path / "run/config.yaml")
    assert to_dict(reloaded) == to_dict(cfg)
    assert dump_config(reloaded) == text
    assert yaml.safe_load(text)["pipeline"]["name"] == cfg.pipeline.name


def test_added_keys_are_marked_so_the_dump_is_a_valid_config():
    text = dump_config(load_config(CLIP, ["+note=x", "+optimizer.fused=false"]))
    data = yaml.safe_load(text)
    assert data["+note"] == "x" and data["optimizer"]["+fused"] is False
    assert "depth" in data["pipeline"]["vision"]  # constructor arguments need no mark


# --------------------------------------------------------------------------------------------
# safety: nothing is evaluated
# --------------------------------------------------------------------------------------------
def test_override_values_are_never_evaluated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = "__import__('os').system('touch PWNED')"
    cfg = load_config(CLIP, [f"+cmd={payload}", f"output_dir={payload}", "+lam=exec(\"open('PWNED2','w')\")"])
    assert cfg.cmd == payload and cfg.output_dir == payload and cfg.lam.startswith("exec(")
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").cmd == payload
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


@pytest.mark.parametrize("tagged", [
    "!!python/object/apply:os.system ['touch PWNED']",
    "!!python/object:collections.OrderedDict {}",
    "!!python/name:os.system ''",
    "!!python/tuple [1, 2]",
])
def test_python_tags_are_refused_by_the_safe_loader(tmp_path, monkeypatch, tagged):
    monkeypatch.chdir(tmp_path)
    bad = write(tmp_path / "bad.yaml", f"output_dir: {tagged}\n")
    with pytest.raises(ConfigError, match="is not valid YAML: could not determine a constructor for the tag"):
        load_config(bad)
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        load_config(CLIP, [f"+x={tagged}"])
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        read_yaml(bad)
    assert not (tmp_path / "PWNED").exists()


def test_non_plain_yaml_values_and_bad_interpolations_are_config_errors(tmp_path):
    for value in ("!!set {a}", "!!binary aGk=", "!!timestamp 2024-01-01", "!!omap [a: 1]"):
        with pytest.raises(ConfigError):
            load_config(CLIP, [f"+x={value}"])
    with pytest.raises(ConfigError, match="alias refers to itself"):
        load_config(CLIP, ["+x=&a [*a]"])
    with pytest.raises(ConfigError, match="Interpolation key 'nope' not found"):
        load_config(CLIP, ["output_dir=${nope}"])
    assert load_config(CLIP, ["output_dir=runs/${pipeline.name}"]).output_dir == "runs/CLIP"  # resolved at load


def test_loaded_config_is_struct_and_plain():
    cfg = load_config(CLIP, ["optimizer.name=sgd"])
    with pytest.raises(Exception):
        cfg.optimzer  # noqa: B018 - struct mode: a typo in code fails loudly
    for node in (cfg.pipeline.vision, cfg.optimizer):  # component and replaced nodes too
        with pytest.raises(Exception):
            node.dpth = 4
    assert OmegaConf.is_dict(cfg)
