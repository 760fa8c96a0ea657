"""Projection heads from a tower's feature width W to the joint image-text space E.

A tower node's ``head`` (ITRA's image/text projection heads, ``src/training/projection.py``)::

    head: {type: none | linear | mlp | dino, layers: 2, hidden_dim: 2048, prototypes: null, norm: null}

- ``none``: the identity (W must equal E).
- ``linear``: a bias-free Linear W -> E, weights N(0, W^-1/2): the projection every existing CLIP
  tower uses (``image_projection``, ``TextTransformer.text_projection``); the default.
- ``mlp``: ``[Linear, (norm), ReLU] * (layers - 1), Linear`` (SLIP's ``ProjectionMLP``): W ->
  hidden_dim -> ... -> E; ``norm``: null, ``bn`` or ``ln``.
- ``dino``: DINO's head (Caron et al. 2021) as ITRA uses it: an MLP W -> hidden_dim -> ... -> E
  (GELU, trunc-normal init; ``layers`` Linear layers, 1 = W -> E directly), then the L2
  normalisation; the output is that unit vector. ``prototypes: K`` adds DINO's weight-normalised
  last layer E -> K (row norms fixed at 1), read with :meth:`DINOProjection.prototype_scores`
  (ITRA's DINO/ProtoCPC distillers); the joint embedding stays the (B, E) unit vector.

Every head has ``in_features`` (W) and ``out_features`` (E), as an ``nn.Linear`` has, so the
evaluation's text tower takes any of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.models.builders.plain import to_plain
from hirl_like.models.heads import NormalizedLinear, ProjectionMLP, _init_linear_trunc_normal

HEAD_TYPES = ("none", "linear", "mlp", "dino")
HEAD_KEYS: dict[str, tuple[str, ...]] = {
    "none": ("type",),
    "linear": ("type",),
    "mlp": ("type", "layers", "hidden_dim", "norm"),
    "dino": ("type", "layers", "hidden_dim", "prototypes"),
}
HEAD_DEFAULTS: dict[str, Any] = {"layers": 2, "hidden_dim": 2048, "prototypes": None, "norm": None}


def check_head(head: Mapping[str, Any] | None, where: str = "head") -> dict[str, Any]:
    """The head node with its defaults filled in; ValueError on an unknown type or key, or a bad value.

    ``None`` is the default head, ``{type: linear}``.
    """
    node = dict(to_plain(head) or {"type": "linear"})
    kind = node.get("type", "linear")
    if kind not in HEAD_TYPES:
        close = difflib.get_close_matches(str(kind), HEAD_TYPES, n=1)
        raise ValueError(f"{where}.type must be one of {', '.join(HEAD_TYPES)}, got {kind!r}"
                         f"{f'; did you mean {close[0]!r}?' if close else '.'}")
    allowed = HEAD_KEYS[kind]
    for key in node:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            raise ValueError(f"{where}: a {kind!r} head has no key {key!r}"
                             f"{f'; did you mean {close[0]!r}?' if close else '.'} Its keys: {', '.join(allowed)}.")
    out = {"type": kind, **{k: node.get(k, HEAD_DEFAULTS[k]) for k in allowed if k != "type"}}
    for key in ("layers", "hidden_dim"):
        if key in out and (not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1):
            raise ValueError(f"{where}.{key} must be an int >= 1, got {out[key]!r}.")
    if kind == "mlp" and out["layers"] < 2:
        raise ValueError(f"{where}: an mlp head needs layers >= 2 (layers: 1 is type: linear), got {out['layers']}.")
    if out.get("prototypes") is not None and (not isinstance(out["prototypes"], int) or out["prototypes"] < 1):
        raise ValueError(f"{where}.prototypes must be null or an int >= 1, got {out['prototypes']!r}.")
    if out.get("norm") not in (None, "bn", "ln"):
        raise ValueError(f"{where}.norm must be null, 'bn' or 'ln', got {out['norm']!r}.")
    return out


class IdentityHead(nn.Identity):
    """``type: none``: (B, W) -> (B, W), with W = E."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_features = self.out_features = int(dim)


class MLPHead(ProjectionMLP):
    """``type: mlp``: (B, W) -> (B, E) through ``layers - 1`` hidden layers of ``hidden_dim``."""

    def __init__(self, in_dim: int, out_dim: int, layers: int = 2, hidden_dim: int = 2048, norm: str | None = None) -> None:
        super().__init__(in_dim, [hidden_dim] * (layers - 1), out_dim, norm=norm)
        self.in_features, self.out_features = int(in_dim), int(out_dim)


class DINOProjection(nn.Module):
    """``type: dino``: (B, W) -> (B, E) unit vectors, ``z = normalize(MLP(x))``; with
    ``prototypes`` K, ``prototype_scores(x) = V z`` (B, K) with unit-norm rows of V (DINO)."""

    def __init__(self, in_dim: int, out_dim: int, layers: int = 2, hidden_dim: int = 2048,
                 prototypes: int | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_dim), int(out_dim)
        if layers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, out_dim)
        else:
            blocks: list[nn.Module] = []
            dim = in_dim
            for _ in range(layers - 1):
                blocks += [nn.Linear(dim, hidden_dim), nn.GELU()]
                dim = hidden_dim
            self.mlp = nn.Sequential(*blocks, nn.Linear(dim, out_dim))
        self.mlp.apply(_init_linear_trunc_normal)
        self.prototypes = NormalizedLinear(out_dim, prototypes) if prototypes else None

    def forward(self, x: Tensor) -> Tensor:
        """(B, W) -> (B, E), L2-normalised."""
        return F.normalize(self.mlp(x), dim=-1)

    def prototype_scores(self, x: Tensor) -> Tensor:
        """(B, W) -> (B, K) cosine scores against the K prototypes."""
        if self.prototypes is None:
            raise ValueError("this dino head has no prototype layer; set head.prototypes: K.")
        return self.prototypes(self.forward(x))


def linear_projection(in_dim: int, out_dim: int) -> nn.Linear:
    """Bias-free Linear W -> E with weights N(0, W^-1/2) (the CLIP towers' projection)."""
    layer = nn.Linear(in_dim, out_dim, bias=False)
    nn.init.normal_(layer.weight, std=in_dim**-0.5)
    return layer


def build_projection_head(head: Mapping[str, Any] | None, in_dim: int, out_dim: int, where: str = "head") -> nn.Module:
    """The head of ``head`` (see the module docstring) mapping (B, in_dim) to (B, out_dim)."""
    node = check_head(head, where)
    kind = node["type"]
    if kind == "none":
        if in_dim != out_dim:
            raise ValueError(f"{where}.type=none keeps the tower's width {in_dim}, but the joint space is "
                             f"{out_dim}-d (pipeline.embed_dim): use a linear/mlp/dino head or embed_dim={in_dim}.")
        return IdentityHead(in_dim)
    if kind == "linear":
        return linear_projection(in_dim, out_dim)
    if kind == "mlp":
        return MLPHead(in_dim, out_dim, node["layers"], node["hidden_dim"], node["norm"])
    return DINOProjection(in_dim, out_dim, node["layers"], node["hidden_dim"], node["prototypes"])


def projection_weight(head: nn.Module) -> Tensor | None:
    """The (E, W) matrix of a head that is one (a bias-free Linear, or the identity), else None."""
    if isinstance(head, nn.Linear) and head.bias is None:
        return head.weight.detach().clone()
    if isinstance(head, IdentityHead):
        return torch.eye(head.out_features)
    return None


def projection_export(head: nn.Module, node: Mapping[str, Any] | None) -> dict[str, Any]:
    """The image projection's entries of ``main_text_checkpoint.pth``.

    A head that is a matrix (the default bias-free Linear, ``linear``, ``none``) is stored as
    before: ``{"image_projection": (E, W) weight}``. Another head (``mlp``, ``dino``) is stored as
    ``{"image_projection": None, "image_head": {"head": node, "in_features": W, "out_features": E,
    "state": state dict}}`` and rebuilt by :func:`projection_from_export`.
    """
    weight = projection_weight(head)
    if weight is not None:
        return {"image_projection": weight}
    return {"image_projection": None, "image_head": {
        "head": dict(node or {}), "in_features": int(head.in_features), "out_features": int(head.out_features),
        "state": {k: v.detach().clone() for k, v in head.state_dict().items()},
    }}


def projection_from_export(entry: Mapping[str, Any]) -> nn.Module:
    """The head stored by :func:`projection_export` under ``image_head``, strictly loaded, in eval mode."""
    head = build_projection_head(entry["head"], int(entry["in_features"]), int(entry["out_features"]), "image_head")
    head.load_state_dict(dict(entry["state"]), strict=True)
    return head.eval()
