"""``pipeline.vision.name: torchvision``: any torchvision classification model as the image tower.

The network is ``torchvision.models.get_model(model, weights=None, **model_kwargs)`` (never a
download) with its last classifier layer replaced by an identity, as ITRA does: the forward
then gives the features the classifier read, (B, W), W = that layer's ``in_features``. The
classifier is the last ``nn.Linear`` under ``fc`` (ResNet, RegNet, ...), ``classifier``
(DenseNet, MobileNet, EfficientNet, ConvNeXt, VGG: the penultimate features), ``heads`` (ViT) or
``head`` (Swin).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from hirl_like.models.builders.names import check_model_name, lazy_list
from hirl_like.models.builders.plain import to_plain
from hirl_like.models.builders.pretrained import (
    check_local_file, load_local_weights, pretrained_skipped, warn_locked_random,
)
from hirl_like.models.builders.vision_tower import BuilderVisionTower
from hirl_like.registry import MODELS

WHERE = "pipeline.vision"
CLASSIFIER_ROOTS = ("fc", "classifier", "heads", "head")


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


torchvision_names = lazy_list(_torchvision_names)


def drop_classifier(network: nn.Module, model: str) -> int:
    """Replace the last ``nn.Linear`` under one of ``CLASSIFIER_ROOTS`` by an identity, in place;
    returns its ``in_features`` (the width of the features the network now returns)."""
    last = None
    for name, module in network.named_modules():
        if isinstance(module, nn.Linear) and name.split(".", 1)[0] in CLASSIFIER_ROOTS:
            last = (name, module)
    if last is None:
        raise ValueError(f"torchvision: cannot find the classifier of {model} (no nn.Linear under "
                         f"{', '.join(CLASSIFIER_ROOTS)}); it is not a classification model.")
    name, layer = last
    parent = network.get_submodule(name.rsplit(".", 1)[0]) if "." in name else network
    setattr(parent, name.rsplit(".", 1)[-1], nn.Identity())
    return int(layer.in_features)


def create_torchvision_network(model: str, img_size: int | None = None,
                               model_kwargs: Mapping[str, Any] | None = None) -> tuple[nn.Module, int]:
    """(network without classifier, its feature width) for ``torchvision.models.get_model(model, weights=None)``."""
    import torchvision

    check_model_name("torchvision", model, torchvision_names())
    kwargs = dict(to_plain(model_kwargs) or {})
    if img_size is not None:
        kwargs["image_size"] = int(img_size)  # torchvision's ViTs; CNNs take any size
    try:
        network = torchvision.models.get_model(model, weights=None, **kwargs)
    except TypeError as err:
        raise ValueError(f"torchvision: {model} does not take the arguments {sorted(kwargs)}: {err}") from None
    return network, drop_classifier(network, model)


@MODELS.register("torchvision", aliases=("TorchvisionTower",))
class TorchvisionTower(BuilderVisionTower):
    """A torchvision image tower: ``forward(images (B, 3, H, W)) -> (B, W)``.

    Args:
        model: a ``torchvision.models.list_models()`` name, e.g. ``resnet18``, ``vit_b_16``.
        pretrained: null (random init) or a LOCAL weight file (e.g. a saved torchvision state
            dict; its classifier weights are dropped). Weight enums (``IMAGENET1K_V1``) are refused.
        img_size: ``image_size`` of torchvision's ViTs; null for CNNs.
        drop_path_rate: must be 0 (torchvision models take no stochastic-depth argument in common).
        model_kwargs: other ``get_model`` arguments (e.g. ``{stochastic_depth_prob: 0.1}``).
        lock, adapter, lora, head: as for every builder tower.
    """

    builder = "torchvision"

    def __init__(
        self,
        model: str = "resnet18",
        pretrained: str | None = None,
        img_size: int | None = None,
        drop_path_rate: float = 0.0,
        model_kwargs: Mapping[str, Any] | None = None,
        lock: bool = False,
        adapter: str | None = None,
        lora: Mapping[str, Any] | None = None,
        head: Mapping[str, Any] | None = None,
    ) -> None:
        if drop_path_rate:
            raise ValueError(f"{WHERE}.drop_path_rate: torchvision towers have none; pass the model's own "
                             "argument in model_kwargs (e.g. stochastic_depth_prob) or use name: timm.")
        network, width = create_torchvision_network(model, img_size, model_kwargs)
        path = check_local_file(WHERE, pretrained)
        if path is not None and not pretrained_skipped():
            load_local_weights(network, path, WHERE, prefixes=("", "module.", "model.", "backbone."))
        warn_locked_random(WHERE, lock, path)
        super().__init__(network, width, WHERE, lock, adapter, lora, head)
        self.model_name = model
