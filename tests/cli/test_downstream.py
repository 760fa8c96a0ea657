"""Downstream configs through tools/train.py: the file names a protocol and the protocol's script
runs with the file's flags and overrides (hirl_like.cli.downstream)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hirl_like.cli import eval_finetune, eval_linear
from hirl_like.cli.downstream import downstream_command, is_downstream_config
from hirl_like.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs" / "downstream").rglob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "downstream.yaml"
    path.write_text(text)
    return path


def test_flags_overrides_and_command_line_items_become_the_scripts_argv(tmp_path):
    path = write(tmp_path, "protocol: finetune\narguments: {epochs: 30, compare_random_init: true, pool: null}\n"
                           "overrides: [data.name=FashionMNIST]\n")
    main, argv = downstream_command(path, ["pretrained=out/run/main_vit_checkpoint.pth", "arguments.epochs=5",
                                           "data.limit=100"])
    assert main is eval_finetune.main
    assert argv == ["--pretrained", "out/run/main_vit_checkpoint.pth", "--epochs", "5", "--compare_random_init",
                    "data.name=FashionMNIST", "data.limit=100"]


def test_protocol_from_the_command_line_and_linear(tmp_path):
    main, argv = downstream_command(write(tmp_path, "protocol: knn\n"), ["protocol=linear", "pretrained=x.pth"])
    assert main is eval_linear.main and argv == ["--pretrained", "x.pth"]


@pytest.mark.parametrize("text, items, message", [
    ("protocol: finetune\n", [], "pretrained=PATH"),
    ("protocol: finetuning\n", ["pretrained=x"], "not one of finetune"),
    ("protocol: semisup\n", ["pretrained=x"], "arguments.label_fraction"),
    ("protocol: finetune\nepochs: 3\n", ["pretrained=x"], "unknown key 'epochs'"),
    ("protocol: finetune\nprotocol: linear\n", ["pretrained=x"], "duplicate key"),
    ("protocol: finetune\narguments: {epochs: {a: 1}}\n", ["pretrained=x"], "arguments.epochs"),
    ("protocol: finetune\n", ["pretrained=x", "arguments=[1]"], "cannot be replaced whole"),
])
def test_bad_downstream_configs_are_refused_naming_what_to_fix(tmp_path, text, items, message):
    with pytest.raises(ConfigError, match=message):
        downstream_command(write(tmp_path, text), items)


def test_a_pretraining_config_is_not_a_downstream_one():
    assert not is_downstream_config(ROOT / "configs" / "quickstart" / "clip_vit_tiny_digits.yaml")
    assert all(is_downstream_config(p) for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "configs" / "downstream")))
def test_every_shipped_downstream_config_parses_with_its_scripts_parser(path, monkeypatch):
    """Each file's flags are flags of its protocol's script: the script's parser accepts them
    (its main is stopped right after parsing, so nothing is loaded)."""
    import argparse

    main, argv = downstream_command(path, ["pretrained=output/run/main_vit_checkpoint.pth"])
    parsed: list[argparse.Namespace] = []

    def stop_after_parse(self, args=None, namespace=None):
        parsed.append(original(self, args, namespace))
        raise SystemExit(0)

    original = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop_after_parse)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_intermixed_args", stop_after_parse)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 0 and parsed and parsed[0].pretrained == "output/run/main_vit_checkpoint.pth"
    parent = path.relative_to(ROOT / "configs" / "downstream").parts
    data_name = {"digits": "data.name=Digits", "fashion_mnist": "data.name=FashionMNIST"}[parent[0]]
    assert data_name in argv  # the folder's data set is the one the file evaluates on
