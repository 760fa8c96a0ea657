"""Generated malformed input is refused cleanly; generated valid input is accepted.

Malformed: hundreds of overrides and files built from the real configs (unknown keys at every
depth, misspellings of real keys, missing '=', empty values, unbalanced brackets and quotes,
invalid key characters, wrong nesting, values of the wrong type, files that are not YAML or not
a mapping, bad ``_base_``). Each must raise exactly ``ConfigError``, raised in
``hirl_like/config/`` (not deep inside a library), with a one-line message and no chained
traceback.

Valid: every leaf key of ``defaults.yaml`` and of each ``configs/quickstart/*.yaml`` set to
another value of the same type; none may be refused and each must arrive with that value and type.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hirl_like  # noqa: F401  (fills the registries)
from hirl_like.config import NULLABLE_KEYS, NUMBER_KEYS, ConfigError, load_config, to_dict
from hirl_like.registry import GLOBAL_REGISTRIES, accepted_parameters

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = sorted((ROOT / "configs/quickstart").glob("*.yaml"))
CLIP = ROOT / "configs/quickstart/clip_vit_tiny_digits.yaml"
HARMONY = ROOT / "configs/quickstart/harmony_vit_tiny_digits.yaml"
CONFIGS: list[Path | None] = [None, *QUICKSTART]  # None: the package defaults alone


def config_id(path: Path | None) -> str:
    return "defaults" if path is None else path.stem


# --------------------------------------------------------------------------------------------
# walking a resolved config
# --------------------------------------------------------------------------------------------
def registered(node: Any) -> Any | None:
    """The constructor of a component node, or None."""
    if not isinstance(node, dict) or not isinstance(node.get("name"), str):
        return None
    owners = [reg for reg in GLOBAL_REGISTRIES if node["name"] in reg]
    return owners[0].get(node["name"]) if len(owners) == 1 else None


def nodes(cfg: dict, path: str = "", in_component: bool = False) -> Iterator[tuple[str, dict, bool]]:
    """(path, node, keys_checked) for every mapping: a plain node outside components is checked
    against the defaults, a registered component without ``**kwargs`` against its signature;
    plain argument nodes inside a component and ``**kwargs`` components are not checked."""
    component = registered(cfg)
    if component is not None:
        checked = not accepted_parameters(component)[1]
    else:
        checked = not in_component
    yield path, cfg, checked
    for key, value in cfg.items():
        if isinstance(value, dict):
            yield from nodes(value, f"{path}.{key}" if path else key, in_component or component is not None)


def leaves(cfg: dict, path: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in cfg.items():
        full = f"{path}.{key}" if path else key
        if isinstance(value, dict) and value:
            yield from leaves(value, full)
        else:
            yield full, value


def as_yaml(value: Any) -> str:
    """YAML text that reads back as exactly ``value`` (strings always quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ".inf" if value == math.inf else repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list):
        return "[" + ", ".join(as_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {as_yaml(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


# Keys that must agree with another (hirl_like/config/rules.py RELATIONS): a new value for one is
# given to both, as a user would.
TIED = {
    "pipeline.embed_dim": "pipeline.text.embed_dim", "pipeline.text.embed_dim": "pipeline.embed_dim",
    "pipeline.ibot.out_dim": "pipeline.ibot.patch_out_dim", "pipeline.ibot.patch_out_dim": "pipeline.ibot.out_dim",
}


def other_value(key: str, value: Any) -> Any:
    """A different, still valid value of the same type (names and other strings stay: they pick
    components): ints doubled (so sizes stay multiples of patch and head counts), 0 -> 1, floats halved."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value * 2 if value else 1
    if isinstance(value, float):
        return value / 2
    return value


def resolved(config: Path | None) -> dict:
    return to_dict(load_config(config))


# --------------------------------------------------------------------------------------------
# malformed overrides, generated
# --------------------------------------------------------------------------------------------
def misspellings(word: str) -> list[str]:
    out = []
    if len(word) > 2:
        out.append(word[: len(word) // 2] + word[len(word) // 2 + 1 :])  # a letter dropped
    if len(word) > 1:
        i = max(0, len(word) // 2 - 1)
        out.append(word[:i] + word[i + 1] + word[i] + word[i + 2 :])  # two letters swapped
    return [w for w in dict.fromkeys(out) if w != word]


def malformed_overrides() -> list[tuple[Path | None, list[str]]]:
    cases: list[tuple[Path | None, list[str]]] = []

    # unknown keys at every depth where keys are checked, in every config
    for config in CONFIGS:
        for path, node, checked in nodes(resolved(config)):
            if checked:
                key = f"{path}.zz_not_a_key" if path else "zz_not_a_key"
                cases.append((config, [f"{key}=1"]))

    # misspellings of real keys (value kept valid, so only the key is wrong)
    for config in (CLIP, HARMONY):
        cfg = resolved(config)
        for path, node, checked in nodes(cfg):
            if not checked:
                continue
            component = registered(node)
            valid = set(node) | set(accepted_parameters(component)[0] if component else ())
            for key, value in node.items():
                if isinstance(value, dict):
                    continue
                variants = [w for w in misspellings(key) if w not in valid]
                if variants:  # one per key, alternating the kind of typo
                    wrong = variants[len(cases) % len(variants)]
                    cases.append((config, [f"{path + '.' if path else ''}{wrong}={as_yaml(value)}"]))

    cfg = resolved(CLIP)
    top_leaves = [k for k, v in cfg.items() if not isinstance(v, dict)]
    all_leaves = [p for p, _ in leaves(cfg)]
    # missing '=', ':' instead of '=', empty values
    for key in top_leaves + ["optimizer.lr", "pipeline.vision.depth", "+new_key"]:
        cases += [(CLIP, [key]), (CLIP, [f"{key}:1"]), (CLIP, [f"{key}="]), (CLIP, [f"{key}=   "])]
    # unbalanced brackets, braces and quotes
    for key in ("optimizer.lr", "output_dir", "transform.scale", "pipeline.vision.depth", "+new_key", "optimizer.betas"):
        for value in ("[1, 2", "{a: 1", "[[1]", "{a: [1}", "'abc", '"abc', "'a b", "[", "{", "[1, {a: 2]", "\"a'", "{{}"):
            cases.append((CLIP, [f"{key}={value}"]))
    # invalid key characters and shapes
    for key in ("a-b", "a b", "a/b", "a..b", ".a", "a.", "1a", "", "++a", "a[0]", "a$", "optimizer.lr ", " epochs",
                "optimizer..lr", "é", "optimizer.l-r", "+", "+.a", "a:b"):
        cases.append((CLIP, [f"{key}=1"]))
    # wrong nesting: into a leaf (every leaf of the top level and of optimizer, a few deeper ones),
    # a node set to a scalar, then into it
    for leaf in all_leaves:
        if leaf.count(".") == 0 or leaf.startswith("optimizer.") or leaf.endswith((".depth", ".scale", ".name")):
            cases.append((CLIP, [f"{leaf}.x=1"]))
    cases += [
        (CLIP, ["optimizer=3", "optimizer.lr=1"]), (CLIP, ["optimizer=3"]), (CLIP, ["pipeline=abc"]),
        (CLIP, ["data=[1]"]), (CLIP, ["transform=1"]), (CLIP, ["pipeline.vision=vit"]), (CLIP, ["optimizer=null"]),
        (CLIP, ["pipeline.text=[1]"]), (HARMONY, ["pipeline.objectives.0=clip"]), (CLIP, ["epochs=3", "epochs.a.b=1"]),
    ]
    # values of the wrong type for the typed keys (those the defaults give a type)
    wrong_by_kind = {
        "int": ["abc", "1.5", "true", "[1]", "null", ".nan"],
        "float": ["abc", "true", "{a: 1}", "null", "'0.1'"],
        "bool": ["1", "abc", "null", "'true'"],
        "str": ["1", "true", "[a]", "null"],
        "list": ["abc", "1", "{a: 1}", "null", "[abc, 1]"],
    }
    for config in (CLIP,):
        for key, value in leaves(resolved(config)):
            if key.split(".")[0] in ("data", "transform", "pipeline") or value is None:
                continue  # component arguments: typed by their constructors (below)
            kind = {bool: "bool", int: "int", float: "float", str: "str", list: "list"}[type(value)]
            for wrong in wrong_by_kind[kind]:
                if wrong == "null" and key in NULLABLE_KEYS:
                    continue
                if key in NUMBER_KEYS and wrong in ("1.5",):
                    continue
                if kind == "list" and wrong == "[abc, 1]" and not all(isinstance(v, (int, float)) for v in value):
                    continue
                cases.append((config, [f"{key}={wrong}"]))
    # component arguments of the wrong type (checked against the constructor's annotations)
    cases += [(CLIP, [o]) for o in (
        "pipeline.vision.depth=abc", "pipeline.vision.img_size=[32, 32]", "pipeline.vision.patch_size=8.5",
        "pipeline.embed_dim=true", "transform.scale=abc", "transform.size=null", "transform.hflip=yes",
        "data.image_size='32'", "pipeline.text.width={a: 1}", "pipeline.vision.drop_path_rate=null",
    )]
    cases += [(HARMONY, [o]) for o in ("pipeline.objectives=3", "pipeline.ema_momentum=high", "pipeline.embed_dim=[1]")]
    # unknown or misspelt component names
    cases += [(CLIP, [o]) for o in (
        "pipeline.name=CLIPP", "pipeline.vision.name=vitt", "data.name=Digitz", "transform.name=", "pipeline.name=3",
        "pipeline.name=null", "pipeline.vision.name=[vit]", "pipeline.text.name=ClipLoss",
    )]
    # non-plain YAML and other values a config cannot hold
    cases += [(CLIP, [f"+x={v}"]) for v in (
        "!!set {a}", "!!binary aGk=", "!!timestamp 2024-01-01", "!!omap [a: 1]", "!!python/object/apply:os.system [ls]",
        "!!python/name:os.system ''", "&a [*a]", "*undefined", "{1: a}", "[a, {2: b}]", "- a\n- b\n---\n- c", "%YAML 1.1",
        "${missing.key}", "${", "a: b: c", "@x", "`x",
    )]
    return cases


MALFORMED = malformed_overrides()


def assert_clean_refusal(call) -> ConfigError:
    with pytest.raises(Exception) as info:
        call()
    err = info.value
    assert type(err) is ConfigError, f"{type(err).__name__}: {err}"
    message = str(err)
    assert message and "\n" not in message, f"not one line: {message!r}"
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__), "chained traceback"
    tb = info.tb
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert str(Path("hirl_like/config")) + os.sep in tb.tb_frame.f_code.co_filename, tb.tb_frame.f_code.co_filename
    return err


def test_at_least_a_few_hundred_malformed_overrides_are_generated():
    assert len(MALFORMED) >= 300
    assert len({(config_id(c), tuple(o)) for c, o in MALFORMED}) == len(MALFORMED)  # no duplicates


@pytest.mark.parametrize(
    "config, overrides", MALFORMED, ids=[f"{config_id(c)}:{' '.join(o)!r}" for c, o in MALFORMED]
)
def test_malformed_override_is_refused_cleanly(config, overrides):
    assert_clean_refusal(lambda: load_config(config, overrides))


# --------------------------------------------------------------------------------------------
# malformed files
# --------------------------------------------------------------------------------------------
BAD_FILES = {
    "not_yaml_unclosed_list": "epochs: [1, 2\n",
    "not_yaml_unclosed_quote": "output_dir: 'abc\n",
    "not_yaml_bad_indent": "optimizer:\n  lr: 1\n lr2: 2\n",
    "not_yaml_tab": "optimizer:\n\tlr: 1\n",
    "not_yaml_colons": ": : :\n",
    "not_yaml_duplicate_anchor_alias": "a: *nowhere\n",
    "python_script": "import os\nos.system('touch PWNED')\nprint(1)\n",
    "json_broken": '{"epochs": 3,\n',
    "non_mapping_list": "- 1\n- 2\n",
    "non_mapping_string": "just a sentence\n",
    "non_mapping_number": "42\n",
    "multi_document": "epochs: 1\n---\nepochs: 2\n",
    "python_tag": "output_dir: !!python/object/apply:os.system ['touch PWNED']\n",
    "date_for_int": "seed: 2024-01-01\n",
    "set_value": "+x: !!set {a, b}\n",
    "int_key": "1: a\n",
    "nested_int_key": "+x:\n  2: b\n",
    "unknown_top_key": "epoch: 3\n",
    "unknown_nested_key": "optimizer:\n  learning_rate: 0.1\n",
    "unknown_component_arg": "pipeline:\n  vision:\n    dpth: 2\n",
    "wrong_type": "epochs: three\n",
    "wrong_nesting": "optimizer: 0.1\n",
    "nested_base": "optimizer:\n  _base_: other.yaml\n",
    "missing_base": "_base_: does_not_exist.yaml\nepochs: 1\n",
    "missing_base_in_list": "_base_: [ok.yaml, missing.yaml]\n",
    "base_not_a_path": "_base_: 3\n",
    "base_list_of_numbers": "_base_: [1, 2]\n",
    "base_empty_string": "_base_: ''\n",
    "base_is_a_directory": "_base_: subdir\n",
    "base_cycle": "_base_: base_cycle.yaml\n",
    "base_not_yaml": "_base_: broken.txt\n",
    "alias_bomb": "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                  "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                  "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n+f: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_malformed_config_file_is_refused_cleanly(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "subdir").mkdir()
    (tmp_path / "ok.yaml").write_text("epochs: 1\n")
    (tmp_path / "broken.txt").write_bytes(b"\x80\x81\xfe\xff not utf-8")
    path = tmp_path / f"{name}.yaml"
    path.write_text(BAD_FILES[name], encoding="utf-8")
    assert_clean_refusal(lambda: load_config(path))
    assert not (tmp_path / "PWNED").exists()


def test_binary_file_missing_file_and_directory_are_refused_cleanly(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    for path in (binary, tmp_path / "missing.yaml", tmp_path):
        assert_clean_refusal(lambda path=path: load_config(path))


def test_overrides_that_are_not_strings_are_refused_cleanly():
    assert_clean_refusal(lambda: load_config(CLIP, [3]))  # type: ignore[list-item]
    assert_clean_refusal(lambda: load_config(CLIP, "epochs=3"))  # a string, not a list of strings


# --------------------------------------------------------------------------------------------
# valid overrides are never refused
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_every_leaf_set_to_a_value_of_its_type_is_accepted(config):
    cfg = resolved(config)
    overrides, expected, refused = [], {}, []
    for key, value in leaves(cfg):
        new = other_value(key, value)
        item = f"{key}={as_yaml(new)}"
        tied = [f"{TIED[key]}={as_yaml(new)}"] if key in TIED and TIED[key] in dict(leaves(cfg)) else []
        try:
            got = to_dict(load_config(config, [item, *tied]))
        except ConfigError as err:
            refused.append(f"{item}: {err}")
            continue
        node: Any = got
        for part in key.split("."):
            node = node[part]
        assert node == new and type(node) is type(new), (item, node)
        overrides.append(item)
        expected[key] = new
    assert not refused, "\n".join(refused)
    assert len(overrides) >= 15
    # all at once too, and int where a float is expected
    together = to_dict(load_config(config, overrides + ["optimizer.lr=1", "optimizer.eps=1"]))
    assert together["epochs"] == expected["epochs"] and together["optimizer"]["lr"] == 1
