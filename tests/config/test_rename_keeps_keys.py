"""No key silently dropped when a component's name changes (issue 20 item 2).

A node renamed to another component is replaced, not merged: what files gave it goes. Keys that
earlier overrides gave it explicitly are carried to the new component when it takes them, and
refused with a message naming the key and the new component when it does not. Either order of
the overrides gives the same config, or an error; never a config without the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hirl_like.config import ConfigError, load_config, to_dict

ROOT = Path(__file__).resolve().parents[2]
CLIP = ROOT / "configs/quickstart/clip_vit_tiny_digits.yaml"


@pytest.mark.parametrize("overrides, node, expected", [
    (["data.image_size=28", "data.name=ImageFolder", "data.root=x"], "data", {"name": "ImageFolder", "image_size": 28, "root": "x"}),
    (["transform.hflip=0.3", "transform.name=MultiCropTransform"], "transform", {"name": "MultiCropTransform", "hflip": 0.3}),
    (["transform.size=16", "transform.name=EvalTransform"], "transform", {"name": "EvalTransform", "size": 16}),
    (["optimizer.lr=0.1", "optimizer.name=sgd"], "optimizer", {"name": "sgd", "lr": 0.1}),
    # a whole mapping naming the new component, and a key given twice: the last value wins
    (["data.image_size=20", "data.image_size=28", "data={name: ImageFolder, root: x}"], "data",
     {"name": "ImageFolder", "image_size": 28, "root": "x"}),
    (["data.image_size=28", "data={name: ImageFolder, root: x, image_size: 64}"], "data",
     {"name": "ImageFolder", "image_size": 64, "root": "x"}),
])
def test_both_orders_give_the_same_node(overrides, node, expected):
    name_first = sorted(overrides, key=lambda o: ".name=" not in o and "={name" not in o)
    assert to_dict(load_config(CLIP, overrides))[node] == expected
    if len({o.split("=")[0] for o in overrides}) == len(overrides) and not any("={" in o for o in overrides):
        assert to_dict(load_config(CLIP, name_first))[node] == expected


def test_keys_the_file_gave_are_replaced_with_the_node():
    # the quickstart's transform (size 32, scale, hflip 0) belongs to RandomResizedCropTransform
    assert to_dict(load_config(CLIP, ["transform.name=EvalTransform"]).transform) == {"name": "EvalTransform"}


@pytest.mark.parametrize("overrides, expected", [
    (["transform.scale=[0.5, 1.0]", "transform.name=EvalTransform"],
     "override 'transform.name=EvalTransform': transform.scale=[0.5, 1.0] (from override 'transform.scale=[0.5, 1.0]') "
     "is not an argument of 'EvalTransform', which replaces the node; it accepts: size, resize_size, mean, std. "
     "Remove it, or set transform.name before it."),
    (["data.image_size=28", "data.name=CsvCaptions", "data.path=x.csv"],
     "is not an argument of 'CsvCaptions'"),
    (["pipeline.vision.depth=2", "pipeline.name=Harmony"],
     "override 'pipeline.name=Harmony': pipeline.vision.depth=2 (from override 'pipeline.vision.depth=2') cannot be kept: "
     "pipeline.name='Harmony' starts a new node without 'vision'. Set pipeline.name first."),
    # carried to an optimizer that does not take it: refused by the validation, naming the override that gave it
    (["+optimizer.fused=false", "optimizer.name=sgd"],
     "override '+optimizer.fused=false': optimizer key 'fused' is not an argument of optimizer 'sgd'"),
])
def test_a_key_the_new_component_does_not_take_is_refused_naming_it(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(CLIP, overrides)
    assert expected in str(info.value), str(info.value)
    # the other order: the key is given to the new component, which refuses it at once
    with pytest.raises(ConfigError):
        load_config(CLIP, sorted(overrides, key=lambda o: ".name=" not in o))


def test_a_carried_value_is_validated_like_any_other():
    with pytest.raises(ConfigError, match=r"override 'data.image_size=0': data.image_size=0: must be an int >= 1"):
        load_config(CLIP, ["data.image_size=0", "data.name=FashionMNIST"])


def test_renaming_back_and_forth_keeps_every_explicit_key():
    cfg = load_config(CLIP, ["data.image_size=28", "data.name=ImageFolder", "data.root=x", "data.name=FashionMNIST",
                             "data.root=y", "data.name=ImageFolder"])
    assert to_dict(cfg.data) == {"name": "ImageFolder", "image_size": 28, "root": "y"}


def test_a_file_rename_keeps_the_keys_of_its_own_node(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"_base_: {CLIP}\ndata: {{image_size: 28, name: ImageFolder, root: x}}\n")
    assert to_dict(load_config(child).data) == {"name": "ImageFolder", "image_size": 28, "root": "x"}
