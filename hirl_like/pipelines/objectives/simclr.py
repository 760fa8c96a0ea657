"""SimCLR objective as SLIP adds it to CLIP (Mu et al. 2022): NT-Xent on two extra image views."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hirl_like.losses.simclr import SimCLRLoss
from hirl_like.models.heads import ProjectionMLP
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objective import Objective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES


@OBJECTIVES.register("simclr")
class SimCLRObjective(Objective):
    """The student ViT encodes ``batch["simclr_views"][0:2]`` (SLIP's two extra augmented views:
    crop scale (0.08, 1), jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, blur p 0.5, flip; made by
    ``MultiCropTransform(simclr_views=2)``); each CLS token goes through a projection MLP
    (SLIP: d -> 4096 -> 4096 -> 256 with BatchNorm); the loss is NT-Xent with temperature 0.1,
    gathered across ranks with gradient, self-similarities masked (:class:`SimCLRLoss`).

    SLIP = ``objectives: {clip: 1.0, simclr: 1.0}``.

    Args:
        hidden_dims: hidden widths of the projection MLP (SLIP: [4096, 4096]).
        out_dim: projection size (SLIP: 256).
        norm: "bn" (SLIP), "ln" or None, after each hidden layer.
        temperature: NT-Xent temperature (SLIP: 0.1).

    Returns ``{"loss", "acc"}`` (``acc``: top-1 of view 1 -> view 2 retrieval, percent).
    """

    views = ("simclr_views",)  # its forward is its own: no shared forward

    def __init__(
        self,
        backbones: Backbones,
        hidden_dims: Sequence[int] = (4096, 4096),
        out_dim: int = 256,
        norm: str | None = "bn",
        temperature: float = 0.1,
    ) -> None:
        super().__init__(backbones)
        self.head = ProjectionMLP(backbones.student_vision.embed_dim, tuple(hidden_dims), out_dim, norm=norm)
        self.loss = SimCLRLoss(temperature=temperature)

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        views = step.view("simclr_views", default=[])
        if len(views) < 2:
            raise KeyError(
                f"the simclr objective needs 2 'simclr_views' per sample, the batch has {len(views)}; "
                "set transform.simclr_views: 2 (MultiCropTransform)."
            )
        b = views[0].shape[0]
        # One ViT pass over both views (the ViT has no batch statistics, so this equals two passes),
        # then the head once per view: SLIP calls the head per view, so each BatchNorm normalises
        # over one view's batch.
        cls = self.backbones.student_vision.forward_tokens(torch.cat(views[:2]))[:, 0]
        return self.loss(self.head(cls[:b]), self.head(cls[b:]))
