"""Result reporting shared by the eval scripts: a markdown table for the console, JSON for files."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _cell(value: Any, float_format: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # 0-d tensor / numpy scalar
    if isinstance(value, float):
        return "nan" if math.isnan(value) else float_format.format(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_table(
    rows: list[dict],
    columns: list[str],
    title: str | None = None,
    float_format: str = "{:.2f}",
) -> str:
    """A markdown table whose columns are padded to line up in plain text too.

    Floats use ``float_format``; missing values and None print as "-". Columns whose values
    are all numbers are right-aligned (markdown ``---:``). The title, if any, is the first line.

    Example::

        | model | k=20  |
        |-------|------:|
        | ibot  | 71.20 |
    """
    if not columns:
        raise ValueError("format_table needs at least one column name.")
    cells = [[_cell(row.get(col), float_format) for col in columns] for row in rows]
    numeric = [
        bool(rows) and all(_is_number(row.get(col)) or row.get(col) is None for row in rows)
        and any(_is_number(row.get(col)) for row in rows)
        for col in columns
    ]
    widths = [max([len(col), 3, *(len(r[i]) for r in cells)]) for i, col in enumerate(columns)]

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else "-" * (w + 2) for w, num in zip(widths, numeric)) + "|"
    header = "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"
    out = ([title, ""] if title else []) + [header, rule] + [line(r) for r in cells]
    return "\n".join(out)


def _to_jsonable(obj: Any) -> Any:
    """json.dump fallback for tensors, numpy values and paths."""
    if hasattr(obj, "tolist"):  # torch.Tensor, numpy array / scalar
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"write_json cannot serialise {type(obj).__name__}: {obj!r}")


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` as indented JSON atomically: temp file in the same folder, then os.replace.

    A crash mid-write leaves either the old file or none, never a truncated one. Parent folders
    are created. Non-string dict keys (e.g. k of k-NN) become strings, as JSON requires.
    """
    if not isinstance(payload, Mapping):
        raise ValueError(f"write_json expects a dict payload, got {type(payload).__name__}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, default=_to_jsonable)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
