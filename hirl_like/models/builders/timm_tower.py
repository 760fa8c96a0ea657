"""``pipeline.vision.name: timm``: any timm model as the image tower, picked by name.

The network is ``timm.create_model(model, pretrained=False, num_classes=0, **model_kwargs)``
(never a download; ``num_classes=0``: no classifier, the forward gives the pooled (B, W)
``num_features``), then the local ``pretrained`` file when one is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hirl_like.models.builders.names import check_model_name, lazy_list
from hirl_like.models.builders.plain import to_plain
from hirl_like.models.builders.pretrained import (
    check_local_file, load_local_weights, pretrained_skipped, warn_locked_random,
)
from hirl_like.models.builders.vision_tower import BuilderVisionTower
from hirl_like.registry import MODELS

WHERE = "pipeline.vision"


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


timm_names = lazy_list(_timm_names)


def _timm_tags(model: str) -> list[str]:
    import timm

    return [name.split(".", 1)[1] for name in timm.list_pretrained(model + ".*") if "." in name]


def create_timm_network(model: str, img_size: int | None = None, drop_path_rate: float = 0.0,
                        model_kwargs: Mapping[str, Any] | None = None) -> Any:
    """``timm.create_model(model, pretrained=False, num_classes=0, ...)``: the random-init network
    whose state dict ``TimmTower.export_state_dict`` holds (``main_vit_checkpoint.pth``)."""
    import timm

    base = model.split(".", 1)[0]  # 'vit_tiny_patch16_224.augreg_in21k' names a tag of the same network
    check_model_name("timm", base, timm_names())
    kwargs = dict(to_plain(model_kwargs) or {})
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    if drop_path_rate:
        kwargs["drop_path_rate"] = float(drop_path_rate)
    try:
        return timm.create_model(base, pretrained=False, num_classes=0, **kwargs)
    except TypeError as err:
        raise ValueError(f"timm: {base} does not take the arguments {sorted(kwargs)}: {err}") from None


@MODELS.register("timm", aliases=("TimmTower",))
class TimmTower(BuilderVisionTower):
    """A timm image tower: ``forward(images (B, 3, H, W)) -> (B, W)``, W = the model's ``num_features``.

    Args:
        model: a ``timm.list_models()`` name, e.g. ``vit_tiny_patch16_224``, ``resnet18``.
        pretrained: null (random init) or a LOCAL weight file; a timm pretrained tag is refused.
        img_size: input side for models that take one (ViTs); null = the model's default.
        drop_path_rate: stochastic depth (0 = off).
        model_kwargs: other ``timm.create_model`` arguments, e.g. ``{patch_size: 8, depth: 4}``.
        lock, adapter, lora: LiT / LoRA (:mod:`hirl_like.models.builders.adapters`).
        head: the projection head to the joint space (:mod:`hirl_like.models.builders.projection`).
        grad_checkpointing: timm's ``set_grad_checkpointing`` (models that support it).
    """

    builder = "timm"

    def __init__(
        self,
        model: str = "vit_tiny_patch16_224",
        pretrained: str | None = None,
        img_size: int | None = None,
        drop_path_rate: float = 0.0,
        model_kwargs: Mapping[str, Any] | None = None,
        lock: bool = False,
        adapter: str | None = None,
        lora: Mapping[str, Any] | None = None,
        head: Mapping[str, Any] | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        network = create_timm_network(model, img_size, drop_path_rate, model_kwargs)
        path = check_local_file(WHERE, pretrained, _timm_tags(model.split(".", 1)[0]) if pretrained else ())
        if path is not None and not pretrained_skipped():
            load_local_weights(network, path, WHERE, prefixes=("", "module.", "model.", "backbone."))
        warn_locked_random(WHERE, lock, path)
        if grad_checkpointing:
            network.set_grad_checkpointing(True)
        super().__init__(network, int(network.num_features), WHERE, lock, adapter, lora, head)
        self.model_name = model
