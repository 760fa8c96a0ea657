"""The image tower a builder (open_clip, timm, torchvision) makes, as the pipeline reads it.

What the rest of the toolbox expects of a vision backbone, and what every builder tower gives:

- ``embed_dim``: W, the width of the pooled feature;
- ``forward(images (B, 3, H, W)) -> (B, W)``: the pooled feature (timm's pooled ``num_classes=0``
  output, torchvision's input to its classifier, open_clip's projected CLS / attention pool);
- ``export_state_dict()``: the network's own state dict, exactly the builder's keys (it loads
  strictly into the builder's model of the same config), written to ``main_vit_checkpoint.pth``;
- ``projection_head``: the ``head`` node the pipeline builds its image projection W -> E from.

These towers give no token sequence (no ``forward_tokens``): the pipeline treats them as it
treats a CNN, so objectives that need ViT internals (iBOT, MAE, masked distillation) need the
``vit`` model instead; CLIP, SigLIP and the ITRA distillers read the pooled feature.

``lock`` and ``adapter`` (LiT, LoRA) are :mod:`hirl_like.models.builders.adapters`. A locked
tower without adapter runs under ``torch.no_grad`` (no activation memory), as ITRA's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hirl_like.models.builders.adapters import prepare_network
from hirl_like.models.builders.node_checks import check_tower_node
from hirl_like.models.builders.projection import check_head


class BuilderVisionTower(nn.Module):
    """Args:
    network: the builder's model, (B, 3, H, W) -> (B, W) pooled features.
    embed_dim: W.
    where: the config path for messages (``pipeline.vision``).
    lock, adapter, lora: see :mod:`hirl_like.models.builders.adapters`.
    head: the projection head node (:mod:`hirl_like.models.builders.projection`), built by the pipeline.
    """

    builder = "builder"
    validate_config = staticmethod(check_tower_node)  # config-load check of head / adapter

    def __init__(self, network: nn.Module, embed_dim: int, where: str, lock: bool = False,
                 adapter: str | None = None, lora: Mapping[str, Any] | None = None,
                 head: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.projection_head: dict[str, Any] = check_head(head, f"{where}.head")
        self.model = prepare_network(network, where, lock, adapter, lora)
        self.num_features: int = int(embed_dim)
        self.lock = bool(lock)
        self.adapter = adapter

    @property
    def embed_dim(self) -> int:
        """W, the pooled feature width (the name the pipeline reads)."""
        return self.num_features

    def train(self, mode: bool = True) -> "BuilderVisionTower":
        """As ``nn.Module.train``, but a locked network stays in eval mode (frozen BN statistics, no dropout)."""
        super().train(mode)
        if self.lock:
            self.model.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, W) pooled features."""
        if self.lock and self.adapter is None:
            with torch.no_grad():
                return self.model(images)
        return self.model(images)

    def forward_features(self, images: Tensor) -> Tensor:
        """The network's unpooled output where it has one (a CNN's (B, C, h, w) map)."""
        features = getattr(self.model, "forward_features", None)
        if not callable(features):
            raise ValueError(f"{type(self.model).__name__} has no forward_features; feature-map objectives need a CNN.")
        return features(images)

    def export_state_dict(self) -> dict[str, Tensor]:
        """The network's state dict (the builder's keys; LoRA keys too when adapted), detached copies."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
