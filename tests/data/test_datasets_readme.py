"""datasets/README.md stays true: every config node it shows and every key its table lists is
accepted by the registered dataset of that name (the config loader would reject anything else)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import hirl_like.data  # noqa: F401  (registers the datasets)
from hirl_like.registry import DATASETS, accepted_parameters, check_arguments

README = Path(__file__).resolve().parents[2] / "datasets" / "README.md"
TEXT = README.read_text(encoding="utf-8")
# keys the trainer / evaluation scripts pass themselves, so the README need not list them
PASSED_BY_CALLERS = {"transform", "tokenizer", "seed"}


def readme_nodes() -> list[dict]:
    """The inline ``{name: ..., key: value}`` data nodes in the README."""
    return [yaml.safe_load(m) for m in re.findall(r"`(\{name: [^`]*\})`", TEXT)]


def readme_key_table() -> dict[str, set[str]]:
    """``data.name`` -> the keys its table row lists (backticked words other than the values in
    parentheses, e.g. the default ``filepath`` of ``image_key``)."""
    rows = {}
    for line in TEXT.splitlines():
        m = re.match(r"\| `(\w+)` \|(.*)\|(.*)\|\s*$", line)
        if m:
            cells = re.sub(r"\([^)]*\)", "", m.group(2) + m.group(3))  # drop "(defaults / values)"
            rows[m.group(1)] = set(re.findall(r"`(\w+)`", cells))
    return rows


def test_the_readme_shows_every_registered_dataset():
    nodes = {n["name"] for n in readme_nodes()}
    assert nodes == set(DATASETS.keys()) == set(readme_key_table())


@pytest.mark.parametrize("node", readme_nodes(), ids=lambda n: n["name"])
def test_every_readme_node_is_a_valid_config_node(node):
    node = dict(node)
    name = node.pop("name")
    check_arguments(DATASETS.get(name), node, context=f"datasets/README.md node {name!r}", require_all=True)


def test_every_key_in_the_readme_table_is_a_constructor_argument():
    for name, keys in readme_key_table().items():
        accepted, _ = accepted_parameters(DATASETS.get(name))
        assert keys <= set(accepted), f"{name}: README lists {sorted(keys - set(accepted))}, not arguments"
        documented = keys | PASSED_BY_CALLERS | {"caption_noise"}
        assert set(accepted) <= documented, f"{name}: README table misses {sorted(set(accepted) - documented)}"
