"""The open_clip image tower by model name (``pipeline.vision.name: open_clip``).

The network is open_clip's ``visual`` of that model, built from its config alone
(``open_clip.model._build_vision_tower``: no text tower is built, nothing is downloaded): a
``VisionTransformer`` (ViT-*: projected [CLS]), a ``ModifiedResNet`` (RN50 ...: attention pool)
or a ``TimmModel``; its forward gives (B, W) with W = the model's ``embed_dim`` (1024 for RN50,
512 for ViT-B-32), or ``output_dim`` when set. ``model_kwargs`` override entries of the
model's ``vision_cfg``, e.g. a tiny ViT at 32 px: ``{image_size: 32, patch_size: 8, width: 64,
layers: 2, head_width: 32}``.

A local ``pretrained`` file may be a whole open_clip checkpoint (its ``visual.*`` weights are
taken) or the visual tower's own state dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hirl_like.models.builders.open_clip_config import open_clip_model_config, open_clip_tags, tower_config
from hirl_like.models.builders.pretrained import (
    check_local_file, load_local_weights, pretrained_skipped, warn_locked_random,
)
from hirl_like.models.builders.vision_tower import BuilderVisionTower
from hirl_like.registry import MODELS

WHERE = "pipeline.vision"


def create_open_clip_visual(model: str, img_size: int | None = None, output_dim: int | None = None,
                            drop_path_rate: float = 0.0, model_kwargs: Mapping[str, Any] | None = None) -> Any:
    """open_clip's ``visual`` of ``model`` at random initialisation (see the module docstring)."""
    from open_clip.model import _build_vision_tower

    config = open_clip_model_config(model, WHERE)
    vision = tower_config(config, "vision_cfg", WHERE, model_kwargs)
    if img_size is not None:
        vision["image_size"] = int(img_size)
    if drop_path_rate:
        if not vision.get("timm_model_name"):
            raise ValueError(f"{WHERE}.drop_path_rate: open_clip's own {model} tower has no stochastic depth "
                             "(only its timm-based towers do); set 0 or use name: timm.")
        vision["timm_drop_path"] = float(drop_path_rate)
    embed_dim = int(output_dim or config["embed_dim"])
    try:
        return _build_vision_tower(embed_dim, vision, quick_gelu=bool(config.get("quick_gelu", False)))
    except TypeError as err:
        raise ValueError(f"{WHERE}.model_kwargs: open_clip's vision_cfg does not take {sorted(model_kwargs or {})}: "
                         f"{err}") from None


@MODELS.register("open_clip_vision", aliases=("OpenClipVisionTower",))
class OpenClipVisionTower(BuilderVisionTower):
    """open_clip image tower: ``forward(images (B, 3, H, W)) -> (B, W)``.

    Args:
        model: an ``open_clip.list_models()`` name (``RN50``, ``ViT-B-32``, ...).
        pretrained: null (random init) or a LOCAL file; a pretrained tag (``openai``, ``laion2b_...``)
            would be downloaded and is refused.
        img_size: overrides ``vision_cfg.image_size``.
        output_dim: W, the projected width (default: the model's ``embed_dim``).
        drop_path_rate: stochastic depth of timm-based towers only.
        model_kwargs: overrides of the model's ``vision_cfg``.
        lock, adapter, lora, head: as for every builder tower.
        grad_checkpointing: open_clip's ``set_grad_checkpointing``.
    """

    builder = "open_clip"

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = None,
        img_size: int | None = None,
        output_dim: int | None = None,
        drop_path_rate: float = 0.0,
        model_kwargs: Mapping[str, Any] | None = None,
        lock: bool = False,
        adapter: str | None = None,
        lora: Mapping[str, Any] | None = None,
        head: Mapping[str, Any] | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        network = create_open_clip_visual(model, img_size, output_dim, drop_path_rate, model_kwargs)
        path = check_local_file(WHERE, pretrained, open_clip_tags(model) if pretrained else ())
        if path is not None and not pretrained_skipped():
            load_local_weights(network, path, WHERE, prefixes=("visual.", ""))
        warn_locked_random(WHERE, lock, path)
        if grad_checkpointing:
            network.set_grad_checkpointing(True)
        super().__init__(network, int(network.output_dim), WHERE, lock, adapter, lora, head)
        self.model_name = model
