"""Checkpoints: atomic writes, safe loads (``weights_only=True``), RNG state in tensor form.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed
over the old one (``os.replace`` is atomic on POSIX): a kill at any moment leaves either the
previous checkpoint or the new one, never a half-written file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pth"
VISION_EXPORT_NAME = "main_vit_checkpoint.pth"
TEXT_EXPORT_NAME = "main_text_checkpoint.pth"


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> None:
    """torch.save to ``path`` via temp file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temp files left by a write that was killed before its rename; returns them."""
    stale = list(Path(folder).glob(".*.tmp.*")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, never arbitrary code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name and the fix
        raise ValueError(
            f"cannot load checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
            "The file is truncated, corrupt, or holds objects other than tensors and plain containers."
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a checkpoint dictionary (got {type(obj).__name__}).")
    return obj


def capture_rng_state() -> dict[str, Any]:
    """RNG states as tensors / plain lists (loadable with weights_only=True)."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
