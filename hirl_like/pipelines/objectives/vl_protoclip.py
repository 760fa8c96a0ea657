"""ProtoCLIP (Chen et al. 2022): CLIP's instance InfoNCE plus prototype-level contrast between the
image and the text space, prototypes from episodic k-means."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hirl_like.losses.clip import ClipLoss
from hirl_like.losses.distillers.protoclip import ProtoCLIPLoss
from hirl_like.models.heads import ProjectionMLP
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objective import Objective
from hirl_like.pipelines.objectives._checks import check_dims, check_hidden_dims, check_positive
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES


@OBJECTIVES.register("vl_protoclip")
class ProtoCLIPObjective(Objective):
    """``L = clip_weight * L_InfoNCE + proto_weight * L_proto`` (ProtoCLIP's ``w_clip * L_clip + w_proto * L_proto``).

    - L_InfoNCE: the symmetric CLIP loss on the shared joint embeddings with its own learnable
      scale (:class:`~hirl_like.losses.clip.ClipLoss`; set ``clip_weight: 0`` when the pipeline
      also lists ``clip``).
    - L_proto: each joint embedding through a projection head of its modality (E ->
      ``projection_hidden_dims`` with BatchNorm + ReLU -> ``projection_dim``; ProtoCLIP: one hidden
      layer of 2048, 128-d; the image head starts as a copy of the text head, as the reference),
      scored with a second learnable scale against the prototypes of the last episode
      (:class:`~hirl_like.losses.distillers.protoclip.ProtoCLIPLoss`; both scales start at
      1/0.07 and are clamped to ``max_logit_scale`` after each step, as the reference).
    - Episodes: the last ``episode_size`` projected pairs of training (every rank's), clustered
      into ``num_prototypes`` prototypes per modality with faiss whenever ``episode_size`` new pairs
      arrived; L_proto is 0 during the first episode (ProtoCLIP's InfoNCE-only warm-up). ProtoCLIP's
      recipe: episodes of 200,000 pairs, K = 20,000, 20 k-means iterations, 3 restarts, PBT on,
      target temperature 0.01. Memory and prototypes are buffers saved in the checkpoint
      (2 x episode_size x projection_dim floats for the memory).
    The external (RoBERTa) teacher of ProtoCLIP is not ported. Both towers get gradients.

    Returns ``{"loss", "infonce", "proto", "acc_i2t", "acc_t2i", "episodes"}`` (all but loss detached).
    """

    def __init__(
        self,
        backbones: Backbones,
        projection_dim: int = 128,
        projection_hidden_dims: Sequence[int] = (2048,),
        num_prototypes: int = 20000,
        episode_size: int = 200000,
        target_temperature: float | None = 0.01,
        pbt: bool = True,
        kmeans_iterations: int = 20,
        kmeans_restarts: int = 3,
        clip_weight: float = 1.0,
        proto_weight: float = 1.0,
        init_logit_scale: float = math.log(1 / 0.07),
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__(backbones)
        check_dims("vl_protoclip", projection_dim=projection_dim, num_prototypes=num_prototypes, episode_size=episode_size)
        hidden = check_hidden_dims("vl_protoclip", "projection_hidden_dims", projection_hidden_dims)
        check_positive("vl_protoclip", "max_logit_scale", max_logit_scale)
        for name, value in (("clip_weight", clip_weight), ("proto_weight", proto_weight)):
            if not value >= 0:
                raise ValueError(f"vl_protoclip.{name} must be >= 0, got {value!r}.")
        backbones.require_text()
        e = int(backbones.embed_dim)
        self.text_head = ProjectionMLP(e, hidden, projection_dim, norm="bn")
        self.image_head = copy.deepcopy(self.text_head)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_scale_proto = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.max_log_scale = math.log(max_logit_scale)
        self.clip_weight, self.proto_weight = float(clip_weight), float(proto_weight)
        self.infonce = ClipLoss()
        self.loss = ProtoCLIPLoss(projection_dim, num_prototypes, episode_size, target_temperature, pbt,
                                  kmeans_iterations, kmeans_restarts)

    def requires(self) -> tuple[str, ...]:
        return ("student_image_embedding", "student_text_embedding")

    def forward(self, step: StepCache) -> dict[str, torch.Tensor]:
        image, text = step.get("student_image_embedding"), step.get("student_text_embedding")
        infonce = self.infonce(image, text, self.logit_scale.float().exp())["loss"]
        z_image, z_text = F.normalize(self.image_head(image), dim=1), F.normalize(self.text_head(text), dim=1)
        proto = self.loss(z_image, z_text, self.logit_scale_proto.float().exp(), seed=step.progress.seed)
        loss = self.clip_weight * infonce + self.proto_weight * proto["loss"]
        return {
            "loss": loss, "infonce": infonce.detach(), "proto": proto["loss"].detach(),
            "acc_i2t": proto["acc_i2t"], "acc_t2i": proto["acc_t2i"], "episodes": proto["episodes"],
        }

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.logit_scale.clamp_(0.0, self.max_log_scale)
        self.logit_scale_proto.clamp_(0.0, self.max_log_scale)
