"""HIRL's semantic path discrimination as an objective beside any image SSL objective
(Xu et al. 2022, "HIRL: A General Framework for Hierarchical Image Representation Learning").

Every ``cluster_interval`` epochs from ``cluster_warmup_epoch`` on, :meth:`on_epoch_start` embeds
the whole training set (evaluation transform, L2-normalised) and builds an L-level hierarchy of
prototypes with :func:`~hirl_like.hirl.hierarchical_kmeans`. Each step then projects the
student's embedding ``e`` of global crop 1 once per level, ``z_l = g_l(e)`` (an MLP of
``num_mlp_layer`` linear layers, width D, BatchNorm + ReLU between them, as HIRL's ``layers.MLP``),
and trains the path score ``s = prod_l (cos(z_l, mu^l_{c_l}) + 1) / 2`` of the image's own path
against ``num_neg_path`` sampled negative paths (:class:`~hirl_like.losses.semantic_path.SemanticPathLoss`).
Before the first clustering the term is 0 (its projectors still take part in the graph, so DDP sees
every parameter used).

``train_emb`` picks ``e``: ``cnn`` the pooled feature of a CNN, ``vit_cls`` the ViT's [CLS] token,
``vit_mean`` the mean of its patch tokens. The same embedding of the exported tower (the EMA teacher
when the method has one, as HIRL's MoCo clusters its key encoder's features; else the student)
is what gets clustered.

The clustering (centroids, assignments, the epoch it was computed at) is part of the module's
state dict (``_extra_state``), so it is saved in ``checkpoint.pth`` and a run resumed after a
clustering epoch uses it as it was, without clustering again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.distributed import is_distributed
from hirl_like.hirl.hierarchical_kmeans import HierarchicalClusters, check_cluster_counts, hierarchical_kmeans
from hirl_like.losses.semantic_path import SPD_EPS, SemanticPathLoss
from hirl_like.models.heads import ProjectionMLP
from hirl_like.pipelines.backbones import Backbones
from hirl_like.pipelines.objective import Objective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES

if TYPE_CHECKING:
    from hirl_like.engine.epoch_context import EpochContext, RunInfo

TRAIN_EMBS = ("cnn", "vit_cls", "vit_mean")


@OBJECTIVES.register("semantic")
class SemanticPathObjective(Objective):
    """Args:
    num_cluster: clusters per level, finest first, non-increasing (HIRL ImageNet: [30000, 10000, 1000]).
    num_neg_path: negative paths sampled per image (HIRL: 1000).
    num_mlp_layer: linear layers of each level's projector (HIRL: 2; its README also uses 3).
    train_emb: ``cnn`` | ``vit_cls`` | ``vit_mean`` (see the module docstring).
    cluster_warmup_epoch: first epoch (0-based) that clusters and trains the term (HIRL: 20 of 200).
    cluster_interval: cluster every this many epochs from then on (HIRL: 1).
    batch_norm: BatchNorm between the projector's layers (HIRL: on).
    kmeans_iterations / kmeans_restarts: faiss k-means iterations and restarts per level (HIRL: 20 / 5).
    eps: inside the logs (HIRL: 1e-6).

    Returns ``{"loss", "pos_loss", "neg_loss", "spd_accuracy", "true_negative_frac", "active"}``;
    ``spd_accuracy`` is the share of images whose own path scores above all their sampled true
    negatives, ``active`` 1 once a clustering exists.
    """

    views = ("global_crops", "index")

    def __init__(
        self,
        backbones: Backbones,
        num_cluster: Sequence[int],
        num_neg_path: int = 1000,
        num_mlp_layer: int = 2,
        train_emb: str = "cnn",
        cluster_warmup_epoch: int = 0,
        cluster_interval: int = 1,
        batch_norm: bool = True,
        kmeans_iterations: int = 20,
        kmeans_restarts: int = 5,
        eps: float = SPD_EPS,
    ) -> None:
        super().__init__(backbones)
        self.arg_prefix = "pipeline.semantic."  # the HIRL pipeline takes these arguments at its top level
        try:
            self.num_cluster = check_cluster_counts(num_cluster)
        except ValueError as err:
            raise ValueError(f"{self.arg_prefix}{err}") from None
        for name, value, low in (("num_neg_path", num_neg_path, 1), ("num_mlp_layer", num_mlp_layer, 1),
                                 ("cluster_warmup_epoch", cluster_warmup_epoch, 0), ("cluster_interval", cluster_interval, 1),
                                 ("kmeans_iterations", kmeans_iterations, 1), ("kmeans_restarts", kmeans_restarts, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{self.arg_prefix}{name} must be an integer >= {low}, got {value!r}.")
        if train_emb not in TRAIN_EMBS:
            raise ValueError(f"{self.arg_prefix}train_emb must be one of {', '.join(TRAIN_EMBS)}, got {train_emb!r}.")
        is_vit = hasattr(backbones.student_vision, "forward_tokens")
        if is_vit == (train_emb == "cnn"):
            fix = "vit_cls or vit_mean" if is_vit else "cnn"
            raise ValueError(
                f"{self.arg_prefix}train_emb={train_emb!r} does not fit the {type(backbones.student_vision).__name__} "
                f"backbone; use {fix}."
            )
        self.train_emb = train_emb
        self.cluster_warmup_epoch = cluster_warmup_epoch
        self.cluster_interval = cluster_interval
        self.kmeans_iterations, self.kmeans_restarts = kmeans_iterations, kmeans_restarts
        dim = int(backbones.student_vision.embed_dim)
        norm = "bn" if batch_norm else None
        self.projectors = nn.ModuleList(
            ProjectionMLP(dim, (dim,) * (num_mlp_layer - 1), dim, norm=norm) for _ in self.num_cluster
        )
        self.loss = SemanticPathLoss(num_neg_path=num_neg_path, eps=eps)
        self.clusters: HierarchicalClusters | None = None
        self._device_clusters: HierarchicalClusters | None = None

    # -- what it reads -------------------------------------------------------------------------
    def requires(self) -> tuple[str, ...]:
        return ("student_global_tokens",) if self.train_emb == "vit_mean" else ("student_global_features",)

    def _student_embedding(self, step: StepCache, batch_size: int) -> Tensor:
        """(B, D) ``e`` of global crop 1 (rows [:B] of the view-major global-crop forwards)."""
        if self.train_emb == "vit_mean":
            prefix = int(getattr(self.backbones.student_vision, "num_prefix_tokens", 1))
            return step.get("student_global_tokens")[:batch_size, prefix:].mean(dim=1)
        return step.get("student_global_features")[:batch_size]

    def embedding_of(self, model: nn.Module) -> Callable[[Tensor], Tensor]:
        """images (B, 3, H, W) -> (B, D) L2-normalised ``train_emb`` embedding by ``model``."""
        prefix = int(getattr(model, "num_prefix_tokens", 1))

        def forward(images: Tensor) -> Tensor:
            if self.train_emb == "cnn":
                e = model(images)
            else:
                tokens = model.forward_tokens(images)
                e = tokens[:, 0] if self.train_emb == "vit_cls" else tokens[:, prefix:].mean(dim=1)
            return F.normalize(e.float(), dim=-1)

        return forward

    # -- the run -------------------------------------------------------------------------------
    def clusters_at(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) starts with a clustering."""
        return epoch >= self.cluster_warmup_epoch and (epoch - self.cluster_warmup_epoch) % self.cluster_interval == 0

    def check_run(self, run: "RunInfo") -> None:
        if self.num_cluster[0] > run.num_samples:
            raise ValueError(
                f"{self.arg_prefix}num_cluster[0]={self.num_cluster[0]} is more clusters than the {run.num_samples} "
                "training images; lower it (HIRL uses about 1 cluster per 40 ImageNet images)."
            )
        if self.cluster_warmup_epoch >= run.epochs:
            raise ValueError(
                f"{self.arg_prefix}cluster_warmup_epoch={self.cluster_warmup_epoch} is not within the run's "
                f"{run.epochs} epochs (0-based), so the semantic path loss would never train; lower it below {run.epochs}."
            )

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, context: "EpochContext") -> None:
        if not self.clusters_at(epoch) or (self.clusters is not None and self.clusters.epoch == epoch):
            return  # not due, or resumed inside an epoch that already clustered
        tower = self.backbones.teacher_vision or self.backbones.student_vision
        was_training = tower.training
        tower.eval()
        tic = time.time()
        features = context.embed_training_set(self.embedding_of(tower))
        tower.train(was_training)
        embed_s = time.time() - tic
        clusters = None
        if context.is_main:  # one rank clusters, every rank receives the same result
            clusters = hierarchical_kmeans(
                features, self.num_cluster, seed=context.seed + 1000 * epoch, niter=self.kmeans_iterations,
                nredo=self.kmeans_restarts, epoch=epoch,
            )
        if is_distributed() and dist.get_world_size() > 1:
            box = [clusters.state_dict() if clusters is not None else None]
            dist.broadcast_object_list(box, src=0, device=context.device if dist.get_backend() == "nccl" else None)
            clusters = HierarchicalClusters.from_state_dict(box[0])
        assert clusters is not None
        self._set_clusters(clusters)
        sizes = torch.bincount(clusters.im2cluster[0], minlength=self.num_cluster[0])
        record = {
            "type": "clustering", "num_cluster": self.num_cluster, "images": clusters.num_samples,
            "embed_s": round(embed_s, 2), "cluster_s": round(time.time() - tic - embed_s, 2),
            "empty_level0_clusters": int((sizes == 0).sum()), "largest_level0_cluster": int(sizes.max()),
        }
        context.log(record)
        if context.is_main:
            print(f"epoch {epoch}: clustered {clusters.num_samples} images into {self.num_cluster} "
                  f"({record['embed_s']} s embedding, {record['cluster_s']} s k-means)")

    def _set_clusters(self, clusters: HierarchicalClusters | None) -> None:
        self.clusters, self._device_clusters = clusters, None

    # -- one step ------------------------------------------------------------------------------
    def forward(self, step: StepCache) -> dict[str, Tensor]:
        crop1 = step.view("global_crops")[0]
        e = self._student_embedding(step, crop1.shape[0])
        z = torch.stack([projector(e) for projector in self.projectors], dim=1)  # (B, L, D)
        if self.clusters is None:  # before the first clustering: a zero term that keeps the graph whole
            zero = z.sum() * 0.0
            return {"loss": zero, "active": zero.detach()}
        if self._device_clusters is None or self._device_clusters.centroids[0].device != z.device:
            self._device_clusters = self.clusters.to(z.device)
        index = torch.as_tensor(step.view("index"), device=z.device).long()
        out = self.loss(z, index, self._device_clusters, generator=step.generator)
        return {**out, "active": torch.ones((), device=z.device)}

    # -- checkpoints ---------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"clusters": None if self.clusters is None else self.clusters.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        saved = state.get("clusters") if isinstance(state, dict) else None
        clusters = None if saved is None else HierarchicalClusters.from_state_dict(saved)
        if clusters is not None and clusters.num_cluster != self.num_cluster:
            raise ValueError(
                f"the checkpoint's clustering has {clusters.num_cluster} clusters per level, this config "
                f"{self.num_cluster}; resume with the same num_cluster or start a new run."
            )
        self._set_clusters(clusters)
