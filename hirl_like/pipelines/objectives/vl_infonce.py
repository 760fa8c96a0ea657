"""ITRA's ``InfoNCE`` distiller: the symmetric CLIP loss, i.e. the ``clip`` objective with hard targets."""

from __future__ import annotations

from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objectives.clip import ClipObjective
from hirl_like.registry import OBJECTIVES


@OBJECTIVES.register("vl_infonce")
class InfoNCEDistillerObjective(ClipObjective):
    """``L = (CE(s I T^T, arange) + CE(s T I^T, arange)) / 2`` on the shared embeddings, gathered over
    ranks (:class:`~hirl_like.losses.clip.ClipLoss`, the ``clip`` objective with ``soft_targets: false``;
    nothing is duplicated). Symmetric: both towers get gradients, so there is no ``teacher``.

    Args:
        init_logit_scale: ln of the initial scale s (ln(1/0.07), ITRA's ``--logit-scale 0.07``).
        max_logit_scale: s is clamped to ln(this) after each step (100, as open_clip; ITRA does not clamp).
    """

    def __init__(self, backbones: Backbones, init_logit_scale: float | None = None, max_logit_scale: float = 100.0) -> None:
        super().__init__(backbones, soft_targets=False, use_siglip=False, init_logit_scale=init_logit_scale,
                         max_logit_scale=max_logit_scale)
