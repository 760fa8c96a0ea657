"""The fine-tuned classifier (backbone + a new linear head) and its optimiser parameter groups.

Layer-wise lr decay (BEiT; timm's ``param_groups_layer_decay``): with L = depth, the layer id is
0 for the stem ([CLS], register tokens, position and patch embeddings), i + 1 for block i, and
L + 1 for the head; a parameter of layer ``id`` trains at ``lr * decay ** (L + 1 - id)``, so
block i gets ``decay ** (L - i)``, the stem ``decay ** (L + 1)`` and the head the full lr. timm's
ViT ``group_matcher`` puts the final norm with the last block (``decay ** 1``; BEiT puts it
with the head). The wrapper below hands timm the backbone's own ``group_matcher`` with its
patterns moved under ``backbone.``, so the layer map is timm's and not a copy of it.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

POOLS = ("cls", "avg")


def _under(prefix: str, pattern: str) -> str:
    """A timm group regex (matched from the start of a name) for the same names under ``prefix``.

    The pattern is wrapped in a non-capturing group, so its alternatives all sit under the prefix
    and its capture groups (the block index) keep their numbers."""
    return rf"^{re.escape(prefix)}(?:{pattern.removeprefix('^')})"


def set_drop_path(backbone: nn.Module, rate: float) -> None:
    """In place: stochastic depth ``rate * i / (L - 1)`` on block i of a timm ViT (timm's linear
    rule, ``torch.linspace(0, rate, L)``); rate 0 removes it. The weights are untouched."""
    from timm.layers import DropPath

    blocks = list(getattr(backbone, "blocks", ()))
    if rate and not blocks:
        raise ValueError(f"drop path needs a ViT with blocks; {type(backbone).__name__} has none (set --drop_path 0).")
    for i, block in enumerate(blocks):
        r = rate * i / max(len(blocks) - 1, 1)
        for name in ("drop_path1", "drop_path2"):
            if hasattr(block, name):
                setattr(block, name, DropPath(r) if r > 0 else nn.Identity())


class FineTuneClassifier(nn.Module):
    """``head(feature(backbone(images)))``: (B, 3, H, W) -> (B, C) logits.

    Feature: a ViT's final-norm [CLS] token (``pool="cls"``, BEiT's ``--use_cls``) or the mean of
    its patch tokens (``pool="avg"``); a ResNet's global average pool. The head is a new
    ``nn.Linear(D, C)``, weight ~ truncated N(0, ``head_init_std``^2) drawn from ``seed`` alone
    (so a pre-trained and a random-init backbone start from the same head), bias 0. Every
    backbone weight is trained, fixed sin-cos position embeddings included (MAE's fine-tuning
    learns them); only iBOT's mask token, which a forward without masks never uses, stays frozen.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, pool: str = "cls",
                 head_init_std: float = 0.01, seed: int = 0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}.")
        self.is_vit = hasattr(backbone, "forward_tokens")
        if pool == "avg" and not self.is_vit:
            raise ValueError(f"pool='avg' averages a ViT's patch tokens; {type(backbone).__name__} has no tokens "
                             "(its feature already is a global average pool). Use pool='cls'.")
        self.backbone = backbone
        self.pool = pool
        self.num_classes = int(num_classes)
        for name, param in backbone.named_parameters():
            param.requires_grad_(name != "mask_token")
        dim = int(backbone.embed_dim)
        self.head = nn.Linear(dim, self.num_classes)
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            weight = torch.empty(self.num_classes, dim)
            nn.init.trunc_normal_(weight, std=head_init_std, a=-2 * head_init_std, b=2 * head_init_std, generator=gen)
            self.head.weight.copy_(weight)
            self.head.bias.zero_()

    def features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) pooled features."""
        if not self.is_vit:
            return self.backbone(images)
        tokens = self.backbone.forward_tokens(images)  # (B, prefix + N, D), normalised
        if self.pool == "cls":
            return tokens[:, 0]
        return tokens[:, int(getattr(self.backbone, "num_prefix_tokens", 1)):].mean(dim=1)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C) logits."""
        return self.head(self.features(images))

    # -- what timm's param_groups_layer_decay reads ------------------------------------------------
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The backbone's timm ``group_matcher`` with every pattern under ``backbone.``; the head
        matches none, so timm gives it the last layer id (the full lr)."""
        if not hasattr(self.backbone, "group_matcher"):
            raise ValueError(f"{type(self.backbone).__name__} has no group_matcher: layer-wise lr decay needs a timm ViT.")
        out: dict[str, Any] = {}
        for group, spec in self.backbone.group_matcher(coarse=coarse).items():
            if isinstance(spec, str):
                out[group] = _under("backbone.", spec)
            elif isinstance(spec, (list, tuple)):
                out[group] = [(_under("backbone.", p), suffix) for p, suffix in spec]
            else:
                out[group] = spec
        return out

    def no_weight_decay(self) -> set[str]:
        """Parameter names without weight decay besides the 1-D ones: the backbone's (timm ViT:
        pos_embed, cls_token, reg_token, dist_token), under ``backbone.``."""
        names = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else set()
        return {f"backbone.{n}" for n in names}


def parameter_groups(model: FineTuneClassifier, weight_decay: float, layer_decay: float | None) -> list[dict[str, Any]]:
    """Optimiser groups, each with ``lr_scale`` (the lr multiplier the schedule applies) and
    ``weight_decay`` (0 for biases, norms and ``model.no_weight_decay()``).

    ``layer_decay``: timm's ``param_groups_layer_decay`` over the model's layer map (a ViT);
    None: timm's ``param_groups_weight_decay``, every group at ``lr_scale`` 1.
    """
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = model.no_weight_decay()
    if layer_decay is not None:
        if not model.is_vit:
            raise ValueError("layer-wise lr decay is defined over a ViT's blocks; a ResNet fine-tunes without it "
                             "(drop --layer_decay).")
        return param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    groups = param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip)
    for group in groups:
        group["lr_scale"] = 1.0
    return groups


def lr_scales(model: nn.Module, groups: list[dict[str, Any]]) -> dict[str, float]:
    """{parameter name: lr_scale} of ``groups`` (for reports and tests)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: float(g.get("lr_scale", 1.0)) for g in groups for p in g["params"]}
