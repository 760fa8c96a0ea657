"""``name: open_clip`` in either tower node: the image tower in ``pipeline.vision``, the text tower
in ``pipeline.text``.

One registered name for both, as a user writes it. The pipeline builds its text node with the
joint ``embed_dim`` (``Backbones.require_text``) and its vision node without, so an ``open_clip``
node built with ``embed_dim`` is a text tower, one built without it an image tower; ``tower:
vision | text`` says it explicitly. The explicit names ``open_clip_vision`` / ``open_clip_text``
are registered too. Arguments of the other tower are refused (``img_size`` in a text node, ...).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from hirl_like.models.builders.node_checks import check_tower_node
from hirl_like.models.builders.open_clip_text import OpenClipTextTower
from hirl_like.models.builders.open_clip_vision import OpenClipVisionTower
from hirl_like.registry import MODELS

TOWERS = ("vision", "text")


def _own_arguments(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


VISION_ONLY = _own_arguments(OpenClipVisionTower) - _own_arguments(OpenClipTextTower)
TEXT_ONLY = _own_arguments(OpenClipTextTower) - _own_arguments(OpenClipVisionTower) - {"embed_dim"}


def _check(tower: str, node: Mapping[str, Any], where: str) -> None:
    """Refuse arguments of the other tower given with a value other than their default (a node
    completed with every default, as ``print_config --defaults`` writes it, still passes)."""
    if tower not in TOWERS:
        raise ValueError(f"{where}.tower must be vision or text, got {tower!r}.")
    defaults = {k: p.default for k, p in inspect.signature(build_open_clip).parameters.items()}
    given = {k for k, v in node.items() if k in defaults and v != defaults[k]}
    foreign = sorted((TEXT_ONLY if tower == "vision" else VISION_ONLY) & given)
    if foreign:
        raise ValueError(f"{where}: {', '.join(foreign)} belong to the open_clip {'text' if tower == 'vision' else 'image'} "
                         f"tower, but this node builds the {tower} tower.")


@MODELS.register("open_clip")
def build_open_clip(
    model: str = "ViT-B-32",
    pretrained: str | None = None,
    tower: str | None = None,
    img_size: int | None = None,
    output_dim: int | None = None,
    drop_path_rate: float = 0.0,
    context_length: int = 77,
    pooler: str = "eos",
    embed_dim: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    lock: bool = False,
    adapter: str | None = None,
    lora: Mapping[str, Any] | None = None,
    head: Mapping[str, Any] | None = None,
    grad_checkpointing: bool = False,
) -> nn.Module:
    """An open_clip image tower (:class:`OpenClipVisionTower`) or text tower
    (:class:`OpenClipTextTower`) of ``model``; ``tower`` null = text when ``embed_dim`` is passed."""
    role = tower or ("text" if embed_dim is not None else "vision")
    _check(role, dict(locals()), "pipeline.text" if role == "text" else "pipeline.vision")
    common = {"model": model, "pretrained": pretrained, "model_kwargs": model_kwargs, "lock": lock,
              "adapter": adapter, "lora": lora, "head": head, "grad_checkpointing": grad_checkpointing}
    if role == "text":
        return OpenClipTextTower(context_length=context_length, pooler=pooler,
                                 embed_dim=512 if embed_dim is None else embed_dim, **common)
    return OpenClipVisionTower(img_size=img_size, output_dim=output_dim, drop_path_rate=drop_path_rate, **common)


def validate_config(node: Mapping[str, Any], path: str) -> None:
    """Config-load check: the node's arguments belong to the tower its place builds."""
    role = node.get("tower") or ("text" if path.split(".")[-1] == "text" else "vision")
    _check(role, node, path)
    check_tower_node(node, path)
    if role == "vision" and node.get("embed_dim") is not None:
        raise ValueError(f"{path}.embed_dim: an open_clip node built with embed_dim is a text tower; the image "
                         "tower's width is output_dim.")


build_open_clip.validate_config = validate_config  # type: ignore[attr-defined]
