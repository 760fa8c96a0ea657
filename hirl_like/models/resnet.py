"""ResNet-18/50 backbones on timm, with an optional small-image (CIFAR) stem.

The network is ``timm.create_model(arch, num_classes=0, pretrained=False)`` (no download, no
classifier: ``fc`` is an ``nn.Identity``), held as ``self.model``. timm's and torchvision's ResNet
state-dict keys coincide for ``conv1``/``bn1``/``layer1..4`` (only torchvision adds ``fc``), so
:meth:`ResNet.export_state_dict` loads with ``strict=True`` into both
``timm.create_model(arch, num_classes=0)`` and ``torchvision.models.<arch>()`` with ``fc``
replaced by ``nn.Identity()``; :func:`create_timm_resnet` and :func:`create_torchvision_resnet`
build those targets.

Small-image stem (``small_image_stem=True``, as CIFAR ResNets): ``conv1`` becomes a 3x3 stride-1
convolution (padding 1, no bias) and the max-pool an identity, so the total stride is 8 instead of
32 (32x32 input -> 4x4 final map). The state-dict keys are unchanged but ``conv1.weight`` is
(64, 3, 3, 3), so a target must get the same stem replacement (the helpers' ``small_image_stem``).
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from hirl_like.registry import MODELS

# arch -> num_features (channels of layer4 = width of the pooled feature)
RESNET_ARCHS: dict[str, int] = {"resnet18": 512, "resnet50": 2048}


def _check_arch(arch: str) -> None:
    if arch not in RESNET_ARCHS:
        raise ValueError(f"unknown ResNet arch {arch!r}; choose one of {sorted(RESNET_ARCHS)}.")


def apply_small_image_stem(net: nn.Module) -> nn.Module:
    """In place: ``conv1`` -> Conv2d(3, C, 3, stride 1, padding 1, no bias), ``maxpool`` -> Identity.

    Works on timm and torchvision ResNets alike (both name the stem ``conv1``/``maxpool``); the new
    convolution gets their initialisation (Kaiming normal, fan_out, ReLU). Returns ``net``.
    """
    old = net.conv1
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"expected a ResNet whose conv1 is an nn.Conv2d, got {type(old).__name__}.")
    conv = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    net.conv1 = conv.to(device=old.weight.device, dtype=old.weight.dtype)
    net.maxpool = nn.Identity()
    return net


def create_timm_resnet(arch: str, small_image_stem: bool = False, **timm_kwargs: Any) -> nn.Module:
    """``timm.create_model(arch, num_classes=0, pretrained=False)`` (+ the small stem): the strict
    target of :meth:`ResNet.export_state_dict`."""
    _check_arch(arch)
    net = timm.create_model(arch, num_classes=0, pretrained=False, **timm_kwargs)
    return apply_small_image_stem(net) if small_image_stem else net


def create_torchvision_resnet(arch: str, small_image_stem: bool = False) -> nn.Module:
    """``torchvision.models.<arch>(weights=None)`` with ``fc = nn.Identity()`` (+ the small stem):
    forward gives the (B, C) pooled features and :meth:`ResNet.export_state_dict` loads strictly."""
    _check_arch(arch)
    import torchvision  # local: only export checks need it

    net = getattr(torchvision.models, arch)(weights=None)
    net.fc = nn.Identity()
    return apply_small_image_stem(net) if small_image_stem else net


@MODELS.register("resnet", aliases=("ResNet",))
class ResNet(nn.Module):
    """timm ResNet without classifier: ``forward(images (B, 3, H, W)) -> (B, C)`` average-pooled.

    Args:
        arch: "resnet18" (C = 512) or "resnet50" (C = 2048).
        small_image_stem: 3x3 stride-1 ``conv1`` and no max-pool, for 32-px inputs.
        drop_path_rate: stochastic depth inside the residual blocks (timm's; 0 = off).
    """

    def __init__(self, arch: str = "resnet50", small_image_stem: bool = False, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        _check_arch(arch)
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}.")
        self.arch = arch
        self.small_image_stem = small_image_stem
        self.model = create_timm_resnet(arch, small_image_stem, drop_path_rate=drop_path_rate)
        self.num_features: int = int(self.model.num_features)
        if self.num_features != RESNET_ARCHS[arch]:  # timm changed its definition
            raise RuntimeError(f"timm {arch} has {self.num_features} features, expected {RESNET_ARCHS[arch]}.")

    @property
    def embed_dim(self) -> int:
        """Same as ``num_features`` (the name the ViT-based pipeline code reads)."""
        return self.num_features

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/s, W/s) layer4 map; s = 32, or 8 with the small stem."""
        return self.model.forward_features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C): global average pool of :meth:`forward_features`."""
        return self.model(images)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Plain state dict with timm's (= torchvision's backbone) keys, detached copies.

        Loads with ``strict=True`` into ``create_timm_resnet(arch, small_image_stem)`` and
        ``create_torchvision_resnet(arch, small_image_stem)``; with ``small_image_stem=True`` the
        target must have the same stem replacement (``conv1.weight`` is (64, 3, 3, 3)).
        """
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}


@MODELS.register("resnet18")
def build_resnet18(small_image_stem: bool = False, drop_path_rate: float = 0.0) -> ResNet:
    """``ResNet(arch="resnet18", ...)``."""
    return ResNet("resnet18", small_image_stem=small_image_stem, drop_path_rate=drop_path_rate)


@MODELS.register("resnet50")
def build_resnet50(small_image_stem: bool = False, drop_path_rate: float = 0.0) -> ResNet:
    """``ResNet(arch="resnet50", ...)``."""
    return ResNet("resnet50", small_image_stem=small_image_stem, drop_path_rate=drop_path_rate)
