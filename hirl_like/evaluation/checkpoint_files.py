"""Read a checkpoint file safely and describe what it holds (for error messages).

:func:`load_checkpoint_file` reads with ``torch.load(..., weights_only=True)`` (or safetensors),
so a downloaded checkpoint cannot run code; :func:`describe_checkpoint` and
:func:`common_prefixes` summarise its keys when it does not fit a model.
"""

from __future__ import annotations

import argparse
import os
import zipfile
from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import Tensor

_SHOW = 10  # pickled globals listed in error messages


# ----------------------------------------------------------------------------------------------
# Reading the file
# ----------------------------------------------------------------------------------------------


def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """Read a checkpoint onto the CPU with ``torch.load(..., weights_only=True)``.

    ``weights_only=True`` refuses pickled Python objects other than tensors and plain containers,
    so a downloaded checkpoint cannot run code. One harmless extra type is allowed:
    ``argparse.Namespace``, which DINO / iBOT checkpoints store under "args".
    ``.safetensors`` files are read with safetensors.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a checkpoint, holds disallowed pickled objects, or is not a dict.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; pass the checkpoint file inside it (e.g. {path}/checkpoint.pth).")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors ships with timm
            raise ValueError(f"{path} is a .safetensors file but the safetensors package is not installed.") from e
        try:
            return dict(load_file(path, device="cpu"))
        except Exception as e:
            raise ValueError(f"{path} is not a valid safetensors checkpoint: {e}") from e
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        unsafe: list[str] = []
        if zipfile.is_zipfile(path):
            try:
                found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
                unsafe = [g for g in found if g != "argparse.Namespace"]
            except Exception:
                unsafe = []
        if unsafe:
            raise ValueError(
                f"{path} contains pickled Python objects that torch.load(weights_only=True) refuses to load: "
                f"{', '.join(unsafe[:_SHOW])}. Loading them could execute arbitrary code. If you trust the file, "
                "re-save only its tensors, e.g. torch.save({'model': model.state_dict()}, new_path), and load that."
            ) from e
        raise ValueError(
            f"{path} is not a PyTorch checkpoint that torch.load(weights_only=True) can read "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})."
        ) from e
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{path} holds a {type(checkpoint).__name__}, not a dict of weights; save a state dict "
            "(torch.save(model.state_dict(), path)) or a dict containing one."
        )
    return dict(checkpoint)


# ----------------------------------------------------------------------------------------------
# Describing a checkpoint (for error messages)
# ----------------------------------------------------------------------------------------------


def _short(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"Tensor{tuple(value.shape)}"
    if isinstance(value, Mapping):
        n_tensors = sum(isinstance(v, Tensor) for v in value.values())
        names = ", ".join(repr(k) for k in list(value)[:3])
        more = ", ..." if len(value) > 3 else ""
        return f"dict of {len(value)} ({n_tensors} tensors): {names}{more}"
    if isinstance(value, (int, float, bool, str)) and len(repr(value)) < 40:
        return f"{type(value).__name__} {value!r}"
    return type(value).__name__


def describe_checkpoint(checkpoint: Any) -> str:
    """A few lines summarising the top-level keys and the first nested key names."""
    if not isinstance(checkpoint, Mapping):
        return f"a {type(checkpoint).__name__} (not a dict)"
    items = list(checkpoint.items())
    n_tensors = sum(isinstance(v, Tensor) for _, v in items)
    lines = [f"dict with {len(items)} top-level keys ({n_tensors} tensors):"]
    shown = items if len(items) <= 12 else items[:8]
    lines += [f"  {k!r}: {_short(v)}" for k, v in shown]
    if len(shown) < len(items):
        lines.append(f"  ... ({len(items) - len(shown)} more)")
    return "\n".join(lines)


def common_prefixes(keys: Collection[str], max_depth: int = 2, limit: int = 8) -> list[tuple[str, int]]:
    """The dotted key prefixes (1..max_depth components, with trailing dot) and how many keys share each."""
    counts: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        for depth in range(1, min(max_depth, len(parts) - 1) + 1):
            counts[".".join(parts[:depth]) + "."] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], len(kv[0]), kv[0]))
    return ranked[:limit]
