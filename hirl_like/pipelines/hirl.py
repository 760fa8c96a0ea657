"""HIRL (Xu et al. 2022): any image SSL method plus semantic path discrimination.

``pipeline.name: hirl`` wraps a base method given as ``base`` (an objective name, a list or a
``{name: weight}`` mapping, as ``objectives`` of :class:`~hirl_like.pipelines.composed.ComposedPipeline`)
and adds the ``semantic`` objective (:mod:`hirl_like.pipelines.objectives.semantic`) with weight
``semantic_weight``; HIRL's own settings sit at the pipeline's top level as in the HIRL configs::

    pipeline:
      name: hirl
      base: mocov2                  # mocov2 | simsiam | swav | mocov3 | dino | ibot
      vision: {name: resnet50}
      mocov2: {queue_size: 65536}   # the base method's arguments, as for ComposedPipeline
      num_cluster: [30000, 10000, 1000]
      num_neg_path: 1000
      num_mlp_layer: 2
      train_emb: cnn                # cnn | vit_cls | vit_mean
      cluster_warmup_epoch: 20
      cluster_interval: 1
      semantic_weight: 1.0

Total loss = base loss + semantic_weight x SPD loss. Besides the composed pipeline's log keys,
each step logs ``image_loss`` (the base method's weighted loss) and ``semantic_loss`` (the SPD
term, unweighted), HIRL's names.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hirl_like.pipelines.composed import ComposedPipeline, check_objective_nodes, parse_objectives
from hirl_like.registry import PIPELINES

SEMANTIC = "semantic"


@PIPELINES.register("hirl", aliases=("HIRL",))
class HIRLPipeline(ComposedPipeline):
    """Args: ``base`` (the base method's objectives), HIRL's settings (see
    :class:`~hirl_like.pipelines.objectives.semantic.SemanticPathObjective`), ``semantic_weight``,
    and every other :class:`ComposedPipeline` argument (``vision``, ``ema_momentum``, the base
    objectives' argument nodes, ...)."""

    def __init__(
        self,
        base: str | Sequence[str] | Mapping[str, float],
        num_cluster: Sequence[int],
        num_neg_path: int = 1000,
        num_mlp_layer: int = 2,
        train_emb: str = "cnn",
        cluster_warmup_epoch: int = 0,
        cluster_interval: int = 1,
        semantic_weight: float = 1.0,
        **pipeline_args: Any,
    ) -> None:
        _refuse_composed_keys(pipeline_args)
        pipeline_args.pop("objectives", None)  # null: a HIRL file inheriting its baseline's node
        weights = parse_objectives(base)
        if SEMANTIC in weights:
            raise ValueError(f"pipeline.base={base!r} already holds the {SEMANTIC!r} objective that hirl adds.")
        self.base_names = tuple(weights)
        semantic = {
            "num_cluster": list(num_cluster), "num_neg_path": num_neg_path, "num_mlp_layer": num_mlp_layer,
            "train_emb": train_emb, "cluster_warmup_epoch": cluster_warmup_epoch, "cluster_interval": cluster_interval,
        }
        try:
            super().__init__(objectives={**weights, SEMANTIC: float(semantic_weight)}, semantic=semantic, **pipeline_args)
        except ValueError as err:  # the objective names its arguments pipeline.semantic.*; here they are pipeline.*
            raise ValueError(str(err).replace("pipeline.semantic.", "pipeline.")) from None
        self.objectives[SEMANTIC].arg_prefix = "pipeline."

    @staticmethod
    def validate_config(node: Mapping[str, Any], path: str) -> None:
        """The composed pipeline's check, with HIRL's arguments in place of ``objectives``."""
        _refuse_composed_keys(node)
        composed = set(inspect.signature(ComposedPipeline.__init__).parameters) - {"self", "objective_args", "objectives"}
        own = set(inspect.signature(HIRLPipeline.__init__).parameters) - {"self", "pipeline_args"}
        check_objective_nodes({k: v for k, v in node.items() if k != "objectives"}, path, composed | own)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = super().forward(batch)
        weighted = self._weighted_terms
        out["image_loss"] = sum(weighted[name].detach() for name in self.base_names)
        out["semantic_loss"] = out[SEMANTIC]
        return out


def _refuse_composed_keys(node: Mapping[str, Any]) -> None:
    for key in ("objectives", SEMANTIC):
        if node.get(key) is not None:
            raise ValueError(
                f"pipeline.{key} is not an argument of the hirl pipeline: give the base method as pipeline.base "
                "and HIRL's settings (num_cluster, num_neg_path, ...) at the pipeline's top level."
            )
