"""Name the architecture a flat backbone state dict was saved from (for "wrong --arch" messages).

Reads shapes only: a timm ViT by ``cls_token`` (width), ``blocks.<i>.`` (depth) and
``patch_embed.proj.weight`` (patch size); a timm / torchvision ResNet by ``layer4.`` and whether
its blocks have a ``conv3`` (bottleneck: resnet50) and a 3x3 ``conv1`` (the small-image stem).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from hirl_like.models.vit import VIT_ARCHS

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def _strip(state: Mapping[str, Any], anchor: str) -> dict[str, Tensor]:
    """The tensors of ``state`` under the prefix that precedes its first ``anchor`` key."""
    key = next((k for k in state if isinstance(k, str) and (k == anchor or k.endswith("." + anchor))), None)
    if key is None:
        return {}
    prefix = key[: len(key) - len(anchor)]
    return {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix) and isinstance(v, Tensor)}


def guess_architecture(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """{"arch": --arch value, "overrides": [pipeline.vision.* overrides --arch alone would not set],
    "text": a description} for a ViT or ResNet state dict, else None."""
    vit = _strip(state, "cls_token")
    if vit:
        width = int(vit["cls_token"].shape[-1])
        depth = 1 + max((int(m.group(1)) for k in vit if (m := _BLOCK.search("." + k))), default=-1)
        proj = vit.get("patch_embed.proj.weight")
        patch = int(proj.shape[-1]) if isinstance(proj, Tensor) else None
        arch = next((name for name, (dim, *_rest) in VIT_ARCHS.items() if dim == width), None)
        if arch is None:
            return None
        overrides = [f"pipeline.vision.depth={depth}"] if depth != VIT_ARCHS[arch][1] else []
        overrides += [f"pipeline.vision.patch_size={patch}"] if patch else []
        return {"arch": arch, "overrides": overrides,
                "text": f"a ViT of width {width} ({arch}), depth {depth}, patch {patch}"}
    net = _strip(state, "layer4.0.conv1.weight")
    if net:
        arch = "resnet50" if "layer4.0.conv3.weight" in net else "resnet18"
        conv1 = state.get(next((k for k in state if isinstance(k, str) and k.endswith("conv1.weight")
                                and "layer" not in k), ""), None)
        small = isinstance(conv1, Tensor) and conv1.ndim == 4 and int(conv1.shape[-1]) == 3
        return {"arch": arch, "overrides": [f"pipeline.vision.small_image_stem={'true' if small else 'false'}"],
                "text": f"a {arch}{' with the small-image stem' if small else ''}"}
    return None
