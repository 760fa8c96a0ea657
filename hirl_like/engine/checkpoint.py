"""Checkpoints: atomic writes, safe loads (``weights_only=True``), RNG state in tensor form.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed
over the old one (``os.replace`` is atomic on POSIX): a kill at any moment leaves either the
previous checkpoint or the new one, never a half-written file.

:class:`CheckpointWriter` takes the writes off the training path: :meth:`~CheckpointWriter.submit`
copies the state to CPU at call time (:func:`snapshot_to_cpu`) and writes the files in a
background thread, in the given order, each with :func:`save_atomic`. At most one write is in
flight: the next ``submit`` (and :meth:`~CheckpointWriter.close`) first waits for the previous
one and re-raises its error in the caller's thread as :class:`CheckpointWriteError`. The files
of one submission are written in order and the first failure stops the rest, so the files on disk
are always a prefix of the writes a synchronous save would have made.
"""

from __future__ import annotations

import copy
import os
import random
import sys
import threading
from collections.abc import Callable, Sequence
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


# ----------------------------------------------------------------------------------------------
# Background writes
# ----------------------------------------------------------------------------------------------


def snapshot_to_cpu(obj: Any) -> Any:
    """A copy of ``obj`` (nested dicts / lists / tuples of tensors and plain values) whose tensors
    are CPU copies that share nothing with the originals, taken now.

    Storage sharing is kept as ``torch.save`` records it: tensors that are views of one storage
    (tied weights, slices) become views of one copied storage, so the file written from the
    snapshot holds the same storages, offsets and strides as one written from ``obj`` itself.
    Dict subclasses keep their type and attributes (a state dict's ``_metadata``).
    """
    storages: dict[tuple[str, int, int], torch.UntypedStorage] = {}

    def tensor(t: torch.Tensor) -> torch.Tensor:
        if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.is_sparse or t.is_quantized or t.device.type == "meta":
            return t.detach().to("cpu", copy=True)  # rare layouts: a plain copy, no sharing kept
        src = t.untyped_storage()
        key = (str(t.device), src.data_ptr(), src.nbytes())
        if key not in storages:
            raw = torch.empty(0, dtype=torch.uint8, device=t.device).set_(src)
            storages[key] = raw.to("cpu", copy=True).untyped_storage()
        out = torch.empty(0, dtype=t.dtype).set_(storages[key], t.storage_offset(), t.size(), t.stride())
        return torch.nn.Parameter(out, requires_grad=t.requires_grad) if isinstance(t, torch.nn.Parameter) else out

    def walk(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return tensor(x)
        if isinstance(x, (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device, torch.Size)):
            return x
        if isinstance(x, dict):
            out = {} if type(x) is dict else copy.copy(x)  # a subclass keeps its type and attributes
            out.clear()
            for k, v in x.items():
                out[k] = walk(v)
            if getattr(x, "__dict__", None):
                out.__dict__.update(walk(dict(x.__dict__)))
            return out
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, tuple):
            items = [walk(v) for v in x]
            return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
        return copy.deepcopy(x)

    return walk(obj)  # a device-to-host copy waits for the kernels that write its source


SaveFn = Callable[[Any, Path], None]


class CheckpointWriteError(RuntimeError):
    """A background checkpoint write failed; raised in the training thread at the next save or at exit."""


class CheckpointWriter:
    """Writes a save's files (``[(payload, path), ...]``) in order, at most one save in flight.

    ``asynchronous=False`` writes in the caller's thread (no snapshot, errors raised as they are),
    which is ``checkpoint_async=false``. Use :meth:`close` (or the writer as a context manager)
    before the process ends: it waits for the last write and raises its error.
    """

    def __init__(self, asynchronous: bool = True) -> None:
        self.asynchronous = asynchronous
        self._thread: threading.Thread | None = None
        self._error: tuple[BaseException, Path, list[Path]] | None = None
        self._label = ""

    @property
    def busy(self) -> bool:
        """True while a background write is in flight."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, files: Sequence[tuple[Any, str | os.PathLike[str]]], save: SaveFn | None = None, label: str = "") -> None:
        """Write ``files`` in order with ``save`` (default :func:`save_atomic`); in the background
        when asynchronous, from a CPU snapshot taken now. Waits for the previous write first and
        raises its error (:class:`CheckpointWriteError`) before anything of this one is written."""
        save = save_atomic if save is None else save
        jobs = [(payload, Path(path)) for payload, path in files]
        self.wait()
        if not self.asynchronous:
            for payload, path in jobs:
                save(payload, path)
            return
        # one snapshot for all files: a tensor in several of them (an export's weights are the
        # checkpoint's too, a numbered checkpoint is checkpoint.pth) is copied once
        payloads = snapshot_to_cpu([payload for payload, _ in jobs])
        jobs = [(payload, path) for payload, (_, path) in zip(payloads, jobs)]
        self._label = label
        self._thread = threading.Thread(target=self._run, args=(jobs, save), name="checkpoint-writer", daemon=False)
        self._thread.start()

    def _run(self, jobs: list[tuple[Any, Path]], save: SaveFn) -> None:
        for i, (payload, path) in enumerate(jobs):
            try:
                save(payload, path)
            except BaseException as err:  # noqa: BLE001 - handed to the training thread by wait()
                self._error = (err, path, [p for _, p in jobs[i + 1:]])
                return

    def wait(self) -> None:
        """Wait for the write in flight; raise its error, if any, in this thread (once)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is None:
            return
        err, path, skipped = self._error
        self._error = None
        if not isinstance(err, Exception):  # KeyboardInterrupt, SystemExit, ...: passed on as they are
            raise err
        not_written = f"; not written either: {', '.join(p.name for p in skipped)}" if skipped else ""
        raise CheckpointWriteError(
            f"the background checkpoint writer failed to write {path}{f' ({self._label})' if self._label else ''}: "
            f"{type(err).__name__}: {err}{not_written}. The files under their final names are still the previous "
            "save's (each write is a temp file + rename). Fix the cause (disk space, permissions) and rerun the "
            "same command to resume from the last complete checkpoint; checkpoint_async=false writes in the "
            "training thread instead."
        ) from err

    def close(self, raise_errors: bool = True) -> None:
        """Wait for the last write. With ``raise_errors=False`` (the caller is already handling
        another exception) a write error is printed to stderr instead of masking that exception."""
        if raise_errors:
            self.wait()
            return
        try:
            self.wait()
        except BaseException as err:  # noqa: BLE001 - reported, not lost
            print(f"error: {type(err).__name__}: {err}", file=sys.stderr, flush=True)

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(raise_errors=exc_type is None)
