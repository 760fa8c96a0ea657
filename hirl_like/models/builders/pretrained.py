"""Pretrained weights of builder towers: local files only, never a download.

``pretrained`` of a tower node is ``null`` (random initialisation) or the path of a LOCAL file
(``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` / ``.safetensors``). A builder's pretrained *tag*
(open_clip's ``openai`` / ``laion2b_s34b_b79k``, timm's ``augreg_in21k``, ``true``) or a Hub id
would need a download, which nothing here does: such a value is refused with a message that says
so and asks for a local path (:func:`check_local_file`).

A file may hold the tower's state dict as it is, or nested (``{"state_dict": ...}``,
``{"model": ...}``), with a DDP ``module.`` prefix, or a whole CLIP model whose image tower sits
under ``visual.`` (:func:`load_local_weights` picks the prefix that covers the tower's keys).
Loading is strict: every weight of the tower must be in the file; classifier weights the tower
has no place for (``head.*``, ``fc.*``, ``classifier.*``) are the only keys dropped.

Rebuilding a tower only to load an exported checkpoint into it (the evaluation path,
``hirl_like.export``) needs no pretrained file: :func:`skip_pretrained` turns the loading off
for that, so a run can be evaluated where its pretrained file is not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".tar")
CLASSIFIER_PREFIXES = ("head.", "fc.", "classifier.", "heads.")
NESTED_KEYS = ("state_dict", "model", "module", "model_state_dict", "weights")
_SKIP = [False]


@contextmanager
def skip_pretrained() -> Iterator[None]:
    """Within the block, towers are built without reading their ``pretrained`` file (random
    init): for rebuilding a tower whose weights are loaded right after, strictly."""
    before = _SKIP[0]
    _SKIP[0] = True
    try:
        yield
    finally:
        _SKIP[0] = before


def pretrained_skipped() -> bool:
    """True inside :func:`skip_pretrained`."""
    return _SKIP[0]


def download_refusal(where: str, value: object, tags: Sequence[str] = ()) -> ValueError:
    """The error for a ``pretrained`` value that would need a download."""
    known = f" ({value!r} is one of this model's pretrained tags: {', '.join(tags)})" if value in tags else ""
    return ValueError(
        f"{where}.pretrained={value!r} is not a local file: it names weights that would have to be downloaded"
        f"{known}, and nothing is downloaded at run time here. Download the file on a machine with network "
        "access and set pretrained to its LOCAL path (e.g. pretrained: /data/weights/model.pth), or null for a "
        "random initialisation."
    )


def check_local_file(where: str, value: object, tags: Sequence[str] = ()) -> Path | None:
    """``None`` for ``null``/``false``, the path of an existing local file, else a refusal.

    A string that is not an existing file is refused as a download when it looks like a tag or a
    Hub id (no weight-file suffix, e.g. ``openai``, ``hf-hub:org/name``), else as a missing file.
    Inside :func:`skip_pretrained` nothing is read and None is returned.
    """
    if value is None or value is False or pretrained_skipped():
        return None
    if value is True or not isinstance(value, (str, os.PathLike)):
        raise download_refusal(where, value, tags)
    path = Path(os.path.expanduser(str(value)))
    if path.is_file():
        return path
    text = str(value)
    if text.startswith(("hf-hub:", "http://", "https://")) or not text.lower().endswith(WEIGHT_SUFFIXES):
        if not path.exists():
            raise download_refusal(where, value, tags)
    if path.is_dir():
        raise ValueError(f"{where}.pretrained={text!r} is a directory; give the weight file inside it.")
    raise FileNotFoundError(f"{where}.pretrained={text!r}: no such local file.")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping stored in a local weight file (safetensors, or torch.load with weights_only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickled objects beyond tensors
        raise ValueError(
            f"cannot read {path} as plain weights ({type(err).__name__}: {err}). Re-save it as a state dict "
            "(torch.save(model.state_dict(), path)) or as .safetensors."
        ) from None
    if isinstance(payload, nn.Module):
        payload = payload.state_dict()
    if not isinstance(payload, Mapping):
        raise ValueError(f"{path} holds a {type(payload).__name__}, not a state dict.")
    return dict(payload)


def _tensors(node: Mapping[str, Any]) -> dict[str, Tensor]:
    return {k: v for k, v in node.items() if isinstance(k, str) and isinstance(v, Tensor)}


def _candidates(payload: Mapping[str, Any]) -> Iterator[dict[str, Tensor]]:
    yield _tensors(payload)
    for key in NESTED_KEYS:
        if isinstance(payload.get(key), Mapping):
            yield from _candidates(payload[key])


def select_weights(
    payload: Mapping[str, Any], expected: Sequence[str], prefixes: Sequence[str] = ("", "module.", "visual.")
) -> dict[str, Tensor]:
    """The tensors of ``payload`` renamed to the ``expected`` keys: the (nested dict, prefix) whose
    stripped keys cover most expected keys; stripped keys outside ``expected`` are kept (strict
    loading reports them) except classifier weights (``CLASSIFIER_PREFIXES``)."""
    want = set(expected)
    best: tuple[int, dict[str, Tensor]] = (-1, {})
    for tensors in _candidates(payload):
        for prefix in prefixes:
            for extra in ("", "module."):
                full = extra + prefix
                stripped = {k[len(full):]: v for k, v in tensors.items() if k.startswith(full)}
                covered = len(want & set(stripped))
                if covered > best[0]:
                    best = (covered, stripped)
    return {k: v for k, v in best[1].items() if k in want or not k.startswith(CLASSIFIER_PREFIXES)}


def load_local_weights(
    module: nn.Module, path: str | os.PathLike[str], where: str, prefixes: Sequence[str] = ("", "module.", "visual.")
) -> None:
    """Load the weights of local file ``path`` into ``module`` strictly (:func:`load_weights`)."""
    load_weights(module, read_state_dict(path), where, str(path), prefixes)


def load_weights(
    module: nn.Module, payload: Mapping[str, Any], where: str, source: str,
    prefixes: Sequence[str] = ("", "module.", "visual."),
) -> None:
    """Load ``payload`` (a state dict, maybe nested or prefixed: :func:`select_weights`) into
    ``module`` strictly. Raises ValueError naming the missing, unexpected and mis-shaped keys when
    it does not fit. Buffers the module does not save (non-persistent) are not expected.
    """
    own = module.state_dict()
    state = select_weights(payload, list(own), prefixes)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{where}.pretrained={source!r} does not fit the tower ({len(own)} keys expected):"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                parts.append(f"  {title} ({len(keys)}): {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}")
        raise ValueError("\n".join(parts))
    module.load_state_dict(state, strict=True)


def warn_locked_random(where: str, lock: bool, path: Path | None) -> None:
    """Warn when a tower is locked at its random initialisation (it would never learn anything)."""
    if lock and path is None and not pretrained_skipped():
        import warnings

        warnings.warn(f"{where}: lock=true with pretrained=null keeps the tower at its random initialisation "
                      "for the whole run (LiT locks a PRETRAINED tower); set pretrained to a local file.", stacklevel=3)
