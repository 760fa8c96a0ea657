"""open_clip model configs by name, for the open_clip image and text towers.

A name is one of ``open_clip.list_models()`` (``RN50``, ``ViT-B-32``, ...): its JSON config
(``embed_dim``, ``vision_cfg``, ``text_cfg``) ships inside the package, so nothing is fetched.
``hf-hub:`` names and configs whose towers come from the Hugging Face Hub (``hf_model_name``,
``hf_tokenizer_name``) would need a download and are refused.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from hirl_like.models.builders.names import check_model_name
from hirl_like.models.builders.plain import to_plain


def open_clip_names() -> list[str]:
    import open_clip

    return list(open_clip.list_models())


def open_clip_tags(model: str) -> list[str]:
    """The pretrained tags open_clip knows for ``model`` (each one a download)."""
    import open_clip

    try:
        return list(open_clip.list_pretrained_tags_by_model(model))
    except Exception:  # noqa: BLE001 - an older open_clip without the helper
        return []


def open_clip_model_config(model: str, where: str) -> dict[str, Any]:
    """A deep copy of open_clip's config of ``model`` ({embed_dim, vision_cfg, text_cfg, ...})."""
    import open_clip

    if isinstance(model, str) and model.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"{where}.model={model!r} would read its config from the Hugging Face Hub or a directory "
                         "outside open_clip's own list; use one of open_clip.list_models() and a local pretrained file.")
    check_model_name("open_clip", model, open_clip_names())
    config = open_clip.get_model_config(model)
    if config is None:
        raise ValueError(f"open_clip has no config for {model!r}.")
    return copy.deepcopy(dict(config))


def tower_config(config: Mapping[str, Any], key: str, where: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``config[key]`` (``vision_cfg`` / ``text_cfg``) with ``overrides`` applied; refuses Hub towers."""
    tower = dict(config.get(key) or {})
    for hub_key in ("hf_model_name", "hf_tokenizer_name"):
        if tower.get(hub_key):
            raise ValueError(f"{where}: open_clip's {key} builds its tower from the Hugging Face Hub "
                             f"({hub_key}={tower[hub_key]!r}), which would be downloaded. Pick a model with a CLIP "
                             "tower, or use name: huggingface with a local directory.")
    if tower.get("timm_model_pretrained"):
        tower["timm_model_pretrained"] = False  # would download timm's ImageNet weights
    for k, v in dict(to_plain(overrides) or {}).items():
        tower[k] = list(v) if isinstance(v, tuple) else v
    return tower
