"""HARL's loss (Tran et al. 2022, Heuristic Attention Representation Learning): BYOL on the whole
image plus BYOL on its foreground and on its background features.

A heuristic binary mask ``m`` (1 = foreground) is resized to the backbone's feature map
``f`` (C, h, w); the foreground and background features are mask-average-pooled as the reference
code's ``Downsample`` (``HARL/methods/mncrl.py``), with +1 in the denominator so that an empty
region gives the zero vector instead of a division by zero::

    v_fg = sum_hw f * m       / (sum_hw m       + 1)          (B, C)
    v_bg = sum_hw f * (1 - m) / (sum_hw (1 - m) + 1)

Each of the three vectors (global pool, v_fg, v_bg) goes through the *same* BYOL projector and
predictor (online) and the same EMA projector (target). With ``L_t`` the symmetric BYOL loss
(:func:`~hirl_like.losses.byol.symmetric_byol`) of term t between the online prediction of one view
and the target projection of the other::

    byol+f+b:  L = b * L_byol + (1 - b) * (a * L_fg + (1 - a) * L_bg)      (a = b = 0.5)
    byol+f:    L = b * L_byol + (1 - b) * L_fg
    f+b:       L = a * L_fg + (1 - a) * L_bg
    f:         L = L_fg
    byol:      L = L_byol

``loss_type`` also accepts the reference spellings (``byol+f_loss+b_loss``, ``f_loss`` ...).
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.losses.byol import symmetric_byol
from hirl_like.registry import LOSSES

LOSS_TYPES = ("byol+f+b", "byol+f", "f+b", "f", "byol")
TERMS = ("byol", "fg", "bg")


def canonical_loss_type(loss_type: str) -> str:
    """``byol+f_loss+b_loss`` -> ``byol+f+b`` (the reference's names), checked against LOSS_TYPES."""
    name = str(loss_type).strip().lower().replace("_loss", "").replace(" ", "")
    if name not in LOSS_TYPES:
        raise ValueError(f"harl.loss_type must be one of {', '.join(LOSS_TYPES)} (or the reference's "
                         f"byol+f_loss+b_loss spelling), got {loss_type!r}.")
    return name


def term_weights(loss_type: str, alpha: float = 0.5, beta: float = 0.5) -> dict[str, float]:
    """{term: weight} of L for ``loss_type`` (module docstring); terms of weight 0 included."""
    kind = canonical_loss_type(loss_type)
    return {
        "byol+f+b": {"byol": beta, "fg": (1 - beta) * alpha, "bg": (1 - beta) * (1 - alpha)},
        "byol+f": {"byol": beta, "fg": 1 - beta, "bg": 0.0},
        "f+b": {"byol": 0.0, "fg": alpha, "bg": 1 - alpha},
        "f": {"byol": 0.0, "fg": 1.0, "bg": 0.0},
        "byol": {"byol": 1.0, "fg": 0.0, "bg": 0.0},
    }[kind]


def foreground_on_grid(mask: Tensor, size: tuple[int, int], threshold: float = 0.0) -> Tensor:
    """(B, 1, H, W) mask (nonzero = foreground) -> (B, 1, h, w) float {0, 1} on the feature grid.

    A cell is foreground when the share of foreground pixels it covers (area interpolation,
    ``adaptive_avg_pool2d``) is above ``threshold``; 0 (the default) marks every cell touched by
    the foreground, as the reference's resize to 7x7 followed by ``> 0``.
    """
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W), got {tuple(mask.shape)}.")
    share = F.adaptive_avg_pool2d((mask > 0).float(), size)
    return (share > threshold).float()


def masked_average_pool(feature_map: Tensor, mask: Tensor) -> Tensor:
    """``sum_hw f * m / (sum_hw m + 1)``: feature_map (B, C, h, w), mask (B, 1, h, w) -> (B, C)."""
    if feature_map.dim() != 4 or mask.shape != (feature_map.shape[0], 1, *feature_map.shape[2:]):
        raise ValueError(f"feature_map (B, C, h, w) and mask (B, 1, h, w) must agree, got "
                         f"{tuple(feature_map.shape)} and {tuple(mask.shape)}.")
    m = mask.to(feature_map.dtype)
    return (feature_map * m).flatten(2).sum(-1) / (m.flatten(2).sum(-1) + 1.0)


class TermPair(NamedTuple):
    """One term's two views: online predictions p1, p2 and target projections z1, z2, all (B, D)."""

    p1: Tensor
    p2: Tensor
    z1: Tensor
    z2: Tensor


@LOSSES.register()
class HARLLoss(nn.Module):
    """``forward(byol, fg, bg)`` (each a :class:`TermPair`) -> ``{"loss", "byol", "fg", "bg"}``.

    ``loss`` is the weighted sum of ``loss_type`` (module docstring); the three terms are returned
    detached and unweighted, whatever ``loss_type`` (so runs of different types log the same values).

    Args:
        loss_type: byol+f+b (the reference's default), byol+f, f+b, f or byol.
        alpha: a, the foreground share of the region terms (0.5).
        beta: b, the share of the whole-image BYOL term (0.5).
    """

    def __init__(self, loss_type: str = "byol+f+b", alpha: float = 0.5, beta: float = 0.5) -> None:
        super().__init__()
        for name, value in (("alpha", alpha), ("beta", beta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"harl.{name} must be a number in [0, 1], got {value!r}.")
        self.loss_type = canonical_loss_type(loss_type)
        self.alpha, self.beta = float(alpha), float(beta)
        self.weights = term_weights(self.loss_type, self.alpha, self.beta)

    def forward(self, byol: TermPair, fg: TermPair, bg: TermPair) -> dict[str, Tensor]:
        terms = {name: symmetric_byol(*pair) for name, pair in zip(TERMS, (byol, fg, bg))}
        loss = sum(self.weights[name] * terms[name] for name in TERMS)
        return {"loss": loss, **{name: value.detach() for name, value in terms.items()}}  # type: ignore[dict-item]

    def extra_repr(self) -> str:
        return f"loss_type={self.loss_type!r}, alpha={self.alpha}, beta={self.beta}"
