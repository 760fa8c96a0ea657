"""Config-load checks of a builder tower node (the ``validate_config`` hook the config loader calls),
so that ``pipeline.vision.head.type=mpl`` fails when the config is read, not when the model is built."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hirl_like.models.builders.adapters import check_adapter
from hirl_like.models.builders.projection import check_head


def check_tower_node(node: Mapping[str, Any], path: str) -> None:
    """The node's ``head`` and ``adapter`` / ``lora`` values (ValueError with the closest key)."""
    check_head(node.get("head"), f"{path}.head")
    check_adapter(path, node.get("adapter"), node.get("lora"))
