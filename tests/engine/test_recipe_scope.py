"""``tuned_on``: a recipe tuned on one data set warns, with its advice, when a run reads another."""

from __future__ import annotations

from pathlib import Path

import pytest

from hirl_like.config import ConfigError, load_config
from hirl_like.engine.recipe_scope import off_tuned_data_warning, warn_if_off_tuned_data

ROOT = Path(__file__).resolve().parents[2]
DINO = ROOT / "configs" / "quickstart" / "dino_vit_tiny_digits.yaml"


def test_no_warning_without_tuned_data_or_on_the_tuned_data() -> None:
    assert off_tuned_data_warning(load_config(None, ["data.name=FashionMNIST"])) is None  # tuned_on.data: null
    cfg = load_config(None, ["tuned_on.data=digits", "tuned_on.advice=use more epochs"])
    assert cfg.data.name == "Digits"
    assert off_tuned_data_warning(cfg) is None  # the names compare case-insensitively


def test_other_data_warns_with_the_advice(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(None, ["tuned_on.data=Digits", "tuned_on.advice=set epochs=60", "data.name=FashionMNIST"])
    warn_if_off_tuned_data(cfg)
    err = capsys.readouterr().err
    assert err == "warning: this recipe was tuned on Digits, and this run reads FashionMNIST: set epochs=60\n"
    cfg = load_config(None, ["tuned_on.data=Digits", "data.name=FashionMNIST"])
    assert "may not fit the new data" in off_tuned_data_warning(cfg)


def test_a_quickstart_that_needs_other_views_says_so_on_fashion_mnist() -> None:
    digits = load_config(DINO)
    assert digits.tuned_on.data == "Digits" and digits.tuned_on.advice
    assert off_tuned_data_warning(digits) is None
    assert "transform." in off_tuned_data_warning(load_config(DINO, ["data.name=FashionMNIST"]))


@pytest.mark.parametrize("override", ["tuned_on.dataset=Digits", "+tuned_on.dataset=Digits", "tuned_on.data=' '",
                                      "tuned_on.advice=3"])
def test_tuned_on_is_a_closed_node_of_non_empty_strings(override: str) -> None:
    with pytest.raises(ConfigError, match="tuned_on"):
        load_config(None, [override])
