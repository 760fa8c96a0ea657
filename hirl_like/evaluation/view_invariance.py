"""How much more a backbone's features vary between images than between views of one image.

Self-distillation (DINO, iBOT's [CLS] term, Harmony's iBOT part) asks the student to predict, from
one view, the teacher's output on another view. At initialisation the teacher is a random network;
if its features differ more between two augmented views of one image than between two images, the
per-image part of the targets cannot be predicted, centring wins over sharpening and the targets go
uniform (the collapse the README describes for 8x8 digits under the recipe's views). This ratio,
measured before training, tells which views a dataset can afford.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class ViewInvariance(NamedTuple):
    between: float  # mean squared distance of per-image mean features to their grand mean
    within: float  # mean squared distance of a view's features to its image's mean
    ratio: float  # between / within


def view_invariance(features: Tensor) -> ViewInvariance:
    """Between-image and within-image variance of features over several views of each image.

    Args:
        features: (A, N, D), A >= 2 views of each of N >= 2 images, D-dimensional.
    Returns:
        ``between = mean_n ||m_n - m||^2`` with ``m_n = mean_a f[a, n]`` and ``m = mean_n m_n``;
        ``within = mean_{a,n} ||f[a, n] - m_n||^2``; ``ratio = between / within`` (inf when the
        views of every image agree exactly).
    """
    if features.dim() != 3 or features.shape[0] < 2 or features.shape[1] < 2:
        raise ValueError(f"features must be (views >= 2, images >= 2, dim), got {tuple(features.shape)}")
    f = features.double()
    per_image = f.mean(0)  # (N, D)
    within = (f - per_image).pow(2).sum(-1).mean().item()
    between = (per_image - per_image.mean(0)).pow(2).sum(-1).mean().item()
    return ViewInvariance(between, within, between / within if within > 0 else float("inf"))


@torch.no_grad()
def backbone_view_features(vit: torch.nn.Module, dataset, images: int, views: int, crop: int = 0) -> Tensor:
    """L2-normalised [CLS] features (views, images, D) of global crop ``crop`` of the first
    ``images`` samples, one view per ``dataset.set_epoch(v)`` (augmentations are seeded by epoch)."""
    if images < 2 or views < 2:
        raise ValueError(f"need at least 2 images and 2 views to compare them, got images={images}, views={views}")
    if not hasattr(dataset, "set_epoch"):
        raise ValueError(f"{type(dataset).__name__} has no set_epoch: its views cannot be redrawn")
    if len(dataset) < images:
        raise ValueError(f"the dataset holds {len(dataset)} samples, fewer than images={images}")
    out = []
    for v in range(views):
        dataset.set_epoch(v)
        samples = [dataset[i] for i in range(images)]
        if "global_crops" not in samples[0] or len(samples[0]["global_crops"]) <= crop:
            raise ValueError(f"the config's transform gives no global crop {crop}: choose --crop below its number of crops")
        x = torch.stack([s["global_crops"][crop] for s in samples])
        out.append(torch.nn.functional.normalize(vit.forward_tokens(x)[:, 0].float(), dim=-1))
    return torch.stack(out)
