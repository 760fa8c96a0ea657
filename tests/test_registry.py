"""Registry: decorator registration, lookups, errors that say what to fix, building from configs.

Every test builds a throwaway ``Registry``; the global registries are only read (the listing
command), never written to.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Started at import, so that the child's seconds of importing torch overlap this process's own.
_LISTING = subprocess.Popen(
    [sys.executable, "-m", "hirl_like.registry"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
)

import pytest  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from hirl_like.registry import (  # noqa: E402
    DATASETS,
    GLOBAL_REGISTRIES,
    LOSSES,
    MODELS,
    OBJECTIVES,
    PIPELINES,
    TRANSFORMS,
    Registry,
    RegistryError,
    check_arguments,
    describe_registries,
)


class Head:
    """A module-level class, so that its qualname is plain."""

    def __init__(self, in_dim: int, out_dim: int = 8, norm: bool = False) -> None:
        self.in_dim, self.out_dim, self.norm = in_dim, out_dim, norm


def make_registry() -> Registry:
    reg = Registry("TEST")

    @reg.register()
    class ClipLoss:
        def __init__(self, temperature: float = 0.07, cache_labels: bool = True) -> None:
            self.temperature, self.cache_labels = temperature, cache_labels

    @reg.register("vit", aliases=("ViT", "VisionTransformer"))
    def build_vit(arch: str = "vit_tiny", depth: int | None = None, **timm_kwargs: object) -> dict:
        return {"arch": arch, "depth": depth, **timm_kwargs}

    reg.add(Head)
    return reg


# --------------------------------------------------------------------------------------------
# registration and lookup
# --------------------------------------------------------------------------------------------
def test_register_by_class_name_explicit_name_and_aliases():
    reg = make_registry()
    assert reg.keys() == ["ClipLoss", "Head", "vit"]  # sorted main names; aliases are not keys
    assert list(reg) == reg.keys() and len(reg) == 3
    assert reg.get("ClipLoss").__name__ == "ClipLoss"
    assert reg.get("vit") is reg.get("ViT") is reg.get("VisionTransformer")
    assert reg.get("vit").__name__ == "build_vit"  # the decorator returns the function unchanged
    assert "vit" in reg and "ViT" in reg and "build_vit" not in reg and "clip" not in reg
    assert reg.aliases_of("vit") == ["ViT", "VisionTransformer"]
    assert reg.get("Head") is Head


def test_register_without_parentheses_keeps_the_class():
    reg = Registry("TEST")

    @reg.register
    class Plain:
        pass

    assert isinstance(Plain, type)  # not replaced by the inner decorator function
    assert reg.get("Plain") is Plain


def test_registering_the_same_object_twice_is_harmless():
    reg = Registry("TEST")
    reg.add(Head)
    reg.add(Head)  # a module imported twice registers the same object again
    assert reg.keys() == ["Head"]


def test_unknown_name_lists_available_names_and_closest_match():
    reg = make_registry()
    with pytest.raises(RegistryError) as info:
        reg.get("ClipLos")
    message = str(info.value)
    assert "TEST registry has no entry 'ClipLos'" in message
    assert "Did you mean 'ClipLoss'" in message
    assert "Available: ClipLoss, Head, vit" in message
    # RegistryError is both a KeyError (lookups) and a ValueError (bad arguments), printed as written
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert not message.startswith('"')


def test_unknown_name_matches_case_insensitively_and_aliases():
    reg = make_registry()
    assert "Did you mean 'ClipLoss'" in str(pytest.raises(RegistryError, reg.get, "CLIPLOSS").value)
    assert "Did you mean 'ViT'" in str(pytest.raises(RegistryError, reg.get, "VIT").value)
    assert "'VisionTransformer'" in str(pytest.raises(RegistryError, reg.get, "VisionTransfomer").value)


def test_non_string_name_is_a_clear_error():
    reg = make_registry()
    with pytest.raises(RegistryError, match="a name must be a string, got list"):
        reg.get(["vit"])  # type: ignore[arg-type]


def test_duplicate_name_says_where_the_first_is_defined():
    reg = make_registry()

    class ClipLoss:  # same name, different class
        pass

    with pytest.raises(RegistryError) as info:
        reg.register()(ClipLoss)
    message = str(info.value)
    first = "tests.test_registry:make_registry.<locals>.ClipLoss"
    second = "tests.test_registry:test_duplicate_name_says_where_the_first_is_defined.<locals>.ClipLoss"
    assert f"'ClipLoss' is already registered by {first}" in message
    assert second in message
    assert reg.keys() == ["ClipLoss", "Head", "vit"]  # nothing half-registered


def test_alias_clashing_with_an_entry_is_a_duplicate():
    reg = make_registry()

    def other() -> None:
        pass

    with pytest.raises(RegistryError, match=r"'ViT' is already registered by tests\.test_registry:make_registry\.<locals>\.build_vit"):
        reg.add(other, name="other", aliases=("ViT",))
    assert "other" not in reg


def test_single_string_alias_is_not_split_into_letters():
    reg = Registry("TEST")
    reg.add(Head, aliases="MyHead")  # type: ignore[arg-type]
    assert reg.aliases_of("Head") == ["MyHead"] and "M" not in reg


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------
def test_build_passes_node_keys_and_extras_as_arguments():
    reg = make_registry()
    loss = reg.build({"name": "ClipLoss", "temperature": 0.1})
    assert loss.temperature == 0.1 and loss.cache_labels is True
    head = reg.build({"name": "Head", "out_dim": 4}, in_dim=3)  # extras: what only the caller knows
    assert (head.in_dim, head.out_dim) == (3, 4)
    assert reg.build({"name": "ViT", "depth": 2, "img_size": 32}) == {"arch": "vit_tiny", "depth": 2, "img_size": 32}


def test_build_from_an_omegaconf_node_passes_plain_containers():
    reg = make_registry()
    node = OmegaConf.create({"name": "vit", "arch": "vit_small", "extra": {"a": [1, 2]}})
    built = reg.build(node)
    assert built == {"arch": "vit_small", "depth": None, "extra": {"a": [1, 2]}}
    assert type(built["extra"]) is dict and type(built["extra"]["a"]) is list
    assert OmegaConf.to_container(node)["name"] == "vit"  # the node itself is left as it was


def test_build_with_an_unknown_argument_names_class_module_parameters_and_closest_match():
    reg = make_registry()
    with pytest.raises(RegistryError) as info:
        reg.build({"name": "Head", "in_dim": 3, "out_dimm": 4})
    message = str(info.value)
    assert "TEST 'Head'" in message
    assert "(tests.test_registry:Head)" in message
    assert "unknown argument 'out_dimm'" in message
    assert "Did you mean 'out_dim'" in message
    assert "It accepts: in_dim, out_dim, norm." in message


def test_build_with_a_missing_required_argument_names_it():
    reg = make_registry()
    with pytest.raises(RegistryError, match=r"TEST 'Head' \(tests\.test_registry:Head\) is missing required argument\(s\): in_dim"):
        reg.build({"name": "Head", "out_dim": 4})


def test_build_without_name_or_with_a_non_mapping():
    reg = make_registry()
    with pytest.raises(RegistryError, match="has no 'name' key; set one of: ClipLoss, Head, vit"):
        reg.build({"temperature": 0.1})
    with pytest.raises(RegistryError, match="expected a config mapping with a 'name' key, got str"):
        reg.build("ClipLoss")
    with pytest.raises(RegistryError, match="no entry 'Nope'"):
        reg.build({"name": "Nope"})


def test_check_arguments_lets_kwargs_through_and_the_constructor_decide():
    reg = make_registry()
    check_arguments(reg.get("vit"), {"anything": 1}, context="x")  # **timm_kwargs: no complaint
    with pytest.raises(RegistryError, match="got an unknown argument 'temprature'. Did you mean 'temperature'"):
        check_arguments(reg.get("ClipLoss"), {"temprature": 0.1}, context="LOSSES 'ClipLoss'")


def test_describe_lists_names_aliases_and_module_paths():
    reg = make_registry()
    text = describe_registries((reg,))
    assert text.splitlines() == [
        "TEST (3)",
        "  ClipLoss -> tests.test_registry:make_registry.<locals>.ClipLoss",
        "  Head -> tests.test_registry:Head",
        "  vit [ViT, VisionTransformer] -> tests.test_registry:make_registry.<locals>.build_vit",
    ]


# --------------------------------------------------------------------------------------------
# the listing command
# --------------------------------------------------------------------------------------------
def parse_listing(text: str) -> dict[str, dict[str, str]]:
    """{registry: {name: 'module:qualname'}} from ``python -m hirl_like.registry``."""
    listing: dict[str, dict[str, str]] = {}
    current = None
    for line in text.splitlines():
        header = re.fullmatch(r"([A-Z]+) \((\d+)\)", line)
        entry = re.fullmatch(r"  (\S+)(?: \[[^\]]*\])? -> (\S+:\S+)", line)
        if header:
            current = listing.setdefault(header.group(1), {})
        elif entry and current is not None:
            current[entry.group(1)] = entry.group(2)
        else:
            raise AssertionError(f"unexpected line in the listing: {line!r}")
    return listing


def test_listing_command_prints_every_global_registry_with_module_paths():
    try:
        stdout, stderr = _LISTING.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        _LISTING.kill()
        raise
    proc = subprocess.CompletedProcess(_LISTING.args, _LISTING.returncode, stdout, stderr)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no traceback, and no runpy warning about a module run twice
    listing = parse_listing(proc.stdout)
    assert set(listing) == {"MODELS", "PIPELINES", "OBJECTIVES", "LOSSES", "DATASETS", "TRANSFORMS"}
    assert listing["MODELS"]["vit"] == "hirl_like.models.vit:VisionTransformer"
    assert {"Harmony", "CLIP"} <= set(listing["PIPELINES"])
    assert {"clip", "ibot", "mae", "mlm", "text_distill"} <= set(listing["OBJECTIVES"])
    assert listing["LOSSES"]["ClipLoss"] == "hirl_like.losses.clip:ClipLoss"
    assert listing["DATASETS"]["Digits"].startswith("hirl_like.data.digits:")
    # every entry the package registers (in this process) is listed, with where it is defined
    import hirl_like  # noqa: F401  (fills the registries)

    for reg in GLOBAL_REGISTRIES:
        for name, obj in reg.items():
            assert listing[reg.name].get(name) == f"{obj.__module__}:{obj.__qualname__}", (reg.name, name)


def test_global_registries_are_distinct_and_named():
    assert [r.name for r in (MODELS, PIPELINES, LOSSES, DATASETS, OBJECTIVES, TRANSFORMS)] == [
        "MODELS", "PIPELINES", "LOSSES", "DATASETS", "OBJECTIVES", "TRANSFORMS"
    ]
    assert len({id(r) for r in GLOBAL_REGISTRIES}) == len(GLOBAL_REGISTRIES) == 6
