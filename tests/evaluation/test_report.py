import json
import os

import pytest
import torch

from hirl_like.evaluation.report import format_table, write_json


def test_format_table_aligns_and_formats():
    rows = [
        {"model": "ibot", "k=20": 71.234, "n": 1000},
        {"model": "harmony-vit-b", "k=20": 7.5},
    ]
    text = format_table(rows, ["model", "k=20", "n"], title="k-NN")
    lines = text.splitlines()
    assert lines[0] == "k-NN" and lines[1] == ""
    table = lines[2:]
    assert len({len(line) for line in table}) == 1  # every row has the same width
    assert table[0] == "| model         | k=20  | n    |"
    assert table[1] == "|---------------|------:|-----:|"  # numeric columns right-aligned
    assert table[2] == "| ibot          | 71.23 | 1000 |"
    assert table[3] == "| harmony-vit-b |  7.50 |    - |"  # missing value
    assert "71.2340" in format_table(rows, ["k=20"], float_format="{:.4f}")
    with pytest.raises(ValueError):
        format_table(rows, [])


def test_write_json_is_atomic_and_serialises_tensors(tmp_path):
    path = tmp_path / "sub" / "results.json"
    write_json(path, {"knn": {10: {"top1": torch.tensor(55.5)}}, "sizes": torch.tensor([1, 2])})
    assert json.loads(path.read_text()) == {"knn": {"10": {"top1": 55.5}}, "sizes": [1, 2]}

    # A payload that cannot be serialised leaves the previous file untouched and no temp file.
    with pytest.raises(TypeError, match="cannot serialise"):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text())["sizes"] == [1, 2]
    assert os.listdir(path.parent) == ["results.json"]
