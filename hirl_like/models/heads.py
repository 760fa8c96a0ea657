"""Projection heads: the DINO/iBOT head (also Harmony's text-distillation head) and SLIP's SimCLR MLP.

DINOHead (Caron et al. 2021; Zhou et al. 2022, iBOT):

    z = MLP(x)                       in_dim -> hidden -> ... -> bottleneck (GELU, optional BN)
    z = z / ||z||_2
    y = W z,  W = g * V / ||V||_row   weight-normalised last layer, g fixed at 1 by default

iBOT/Harmony image heads: ``DINOHead(d, 8192, 2048, 256, nlayers=3)``; Harmony's text head:
``DINOHead(512, K // 4, hidden_dim=1024, bottleneck_dim=256, nlayers=2)``.

ProjectionMLP (SLIP, Mu et al. 2022; SimCLR): ``[Linear, BN, ReLU] * len(hidden_dims), Linear``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.registry import MODELS


def _flatten_apply(module: nn.Module, x: Tensor) -> Tensor:
    """Apply ``module`` (which expects (M, C)) to ``x`` of shape (..., C).

    BatchNorm1d would read a (B, N, D) tensor as (batch, channels, length); flattening the leading
    dims makes BN normalise over every token, as iBOT's permuting ``CustomSequential`` does.
    """
    lead = x.shape[:-1]
    y = module(x.reshape(-1, x.shape[-1]))
    return y.reshape(*lead, y.shape[-1])


class NormalizedLinear(nn.Module):
    """Bias-free linear layer with unit-norm weight rows: ``y = x @ normalize(W, dim=1)^T``.

    This is ``weight_norm(Linear(in_dim, out_dim, bias=False))`` with the norm ``g`` fixed at 1
    (DINO/iBOT ``norm_last_layer=True``): only the direction of each row is learned, and the
    gradient reaching ``weight`` is the one weight-norm gives ``V``. ``weight``: (out_dim, in_dim).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        if in_dim <= 0 or out_dim <= 0:
            raise ValueError(f"NormalizedLinear: in_dim and out_dim must be positive, got {in_dim}, {out_dim}.")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        # Same init as nn.Linear (the iBOT head's last layer keeps nn.Linear's default init);
        # only the row directions matter.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def effective_weight(self) -> Tensor:
        """The weight actually applied, (out_dim, in_dim), rows of L2 norm 1."""
        return F.normalize(self.weight, p=2, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_dim) -> (..., out_dim)."""
        return F.linear(x, self.effective_weight())

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, bias=False, row_norm=1"


def _init_linear_trunc_normal(module: nn.Module) -> None:
    """DINO/iBOT init: trunc_normal(std=.02) Linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@MODELS.register()
class DINOHead(nn.Module):
    """DINO/iBOT projection head: MLP -> L2-normalise -> weight-normalised linear to ``out_dim``.

    Args:
        in_dim: input features D.
        out_dim: number of prototypes K (8192 in iBOT/Harmony, 65536 in DINO).
        hidden_dim: width of the hidden layers (used when ``nlayers >= 2``).
        bottleneck_dim: width before the L2 normalisation.
        nlayers: Linear layers in the MLP (1: in_dim -> bottleneck directly).
        use_bn: BatchNorm1d after each hidden Linear (statistics over all leading dims).
        norm_last_layer: fix the last layer's row norms at 1 (``NormalizedLinear``); otherwise a
            weight-normed linear with a learnable norm ``g`` initialised to 1.

    The last layer is ``self.last_layer`` so that a trainer can freeze it by name
    (iBOT's ``freeze_last_layer``).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 8192,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        for arg, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim),
                           ("bottleneck_dim", bottleneck_dim)):
            if value <= 0:
                raise ValueError(f"DINOHead: {arg} must be a positive integer, got {value}.")
        if nlayers < 1:
            raise ValueError(f"DINOHead: nlayers must be >= 1 (1 = a single Linear to the bottleneck), got {nlayers}.")
        self.norm_last_layer = norm_last_layer

        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            dim = in_dim
            for _ in range(nlayers - 1):
                layers.append(nn.Linear(dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
                dim = hidden_dim
            layers.append(nn.Linear(dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.mlp.apply(_init_linear_trunc_normal)

        if norm_last_layer:
            self.last_layer: nn.Module = NormalizedLinear(bottleneck_dim, out_dim)
        else:
            last = nn.Linear(bottleneck_dim, out_dim, bias=False)
            last = nn.utils.parametrizations.weight_norm(last, name="weight", dim=0)
            with torch.no_grad():  # g = 1: the same starting point as the fixed-norm variant
                last.parametrizations.weight.original0.fill_(1.0)
            self.last_layer = last

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_dim), e.g. (B, D) CLS tokens or (B, N, D) patch tokens -> (..., out_dim)."""
        z = _flatten_apply(self.mlp, x)
        z = F.normalize(z, p=2, dim=-1)
        return self.last_layer(z)


_NORMS = ("bn", "ln")


@MODELS.register()
class ProjectionMLP(nn.Module):
    """SLIP's SimCLR projection head: ``[Linear, Norm, ReLU]`` per hidden width, then Linear.

    SLIP uses ``hidden_dims=(4096, 4096), out_dim=256`` with BatchNorm. Under DDP the BN statistics
    are each rank's own (no SyncBatchNorm: it runs on GPUs only; see docs/deviations.md).

    Args:
        in_dim: input features.
        hidden_dims: widths of the hidden layers (may be empty: a single Linear).
        out_dim: output features.
        norm: "bn" (BatchNorm1d), "ln" (LayerNorm) or None.
        last_norm: also normalise the output (BN without affine as in MoCo v3 / SimCLR v2, or an
            affine-free LayerNorm); requires ``norm``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int] = (4096, 4096),
        out_dim: int = 256,
        norm: str | None = "bn",
        last_norm: bool = False,
    ) -> None:
        super().__init__()
        if in_dim <= 0 or out_dim <= 0 or any(h <= 0 for h in hidden_dims):
            raise ValueError(
                f"ProjectionMLP: dimensions must be positive, got in_dim={in_dim}, "
                f"hidden_dims={list(hidden_dims)}, out_dim={out_dim}."
            )
        if norm is not None and norm not in _NORMS:
            raise ValueError(f"ProjectionMLP: norm must be one of {_NORMS} or None, got {norm!r}.")
        if last_norm and norm is None:
            raise ValueError("ProjectionMLP: last_norm=True needs a norm ('bn' or 'ln'); set norm or last_norm=False.")

        layers: list[nn.Module] = []
        dim = in_dim
        for h in hidden_dims:
            layers.append(nn.Linear(dim, h))
            if norm is not None:
                layers.append(self._make_norm(norm, h, affine=True))
            layers.append(nn.ReLU(inplace=True))
            dim = h
        layers.append(nn.Linear(dim, out_dim))
        if last_norm:
            layers.append(self._make_norm(norm, out_dim, affine=False))  # type: ignore[arg-type]
        self.mlp = nn.Sequential(*layers)

    @staticmethod
    def _make_norm(norm: str, dim: int, affine: bool) -> nn.Module:
        if norm == "bn":
            return nn.BatchNorm1d(dim, affine=affine)
        return nn.LayerNorm(dim, elementwise_affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_dim) (or (..., in_dim)) -> (B, out_dim)."""
        return _flatten_apply(self.mlp, x)
