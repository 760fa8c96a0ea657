"""ProtoCLIP's prototype-level contrast (Chen et al. 2022, arXiv 2206.10996, Sec. 3.2-3.3).

Inputs: z_I, z_T (B, d) the L2-normalised projected image and text embeddings of B pairs, and
the learnable proto scale s (ProtoCLIP's ``logit_scale_proto``, exp of ln(1/0.07) at the start).
With the episode's prototypes (:mod:`~hirl_like.losses.distillers.protoclip_episode`): text
centroids C_T and image centroids C_I (K, d), and the student prototypes P_I, P_T (back-translated
with PBT, else P_I = C_T and P_T = C_I)::

    y_T[b] = argmax_k <z_T[b], C_T[k]>   (the caption's text prototype; y_I likewise)
    q_I[b] = softmax(C_T[y_T[b]] C_T^T / tau)            (one-hot e_{y_T[b]} when tau is None)
    L_I2T  = -1/B sum_b sum_k q_I[b, k] log softmax(s z_I[b] P_I^T)_k
    L_T2I  likewise with the roles of image and text swapped
    L_proto = (L_I2T + L_T2I) / 2

tau = 0.01 (``--target-temperature 0.01`` of ProtoCLIP's recipe). The targets carry no gradient.
Before the first episode's prototypes exist the term is 0 (with a zero-weighted dependence on
z_I and z_T, so DDP sees every head parameter used): ProtoCLIP's InfoNCE-only warm-up episode.
After the term, this step's (z_I, z_T) of every rank enter the episode memory; at the start of a
call, once the memory took ``episode_size`` new pairs, the prototypes are rebuilt (seed + episode).

Buffers (in the checkpoint): the memory, ``image_centroids``, ``text_centroids``,
``image_students``, ``text_students`` (K, d), ``episodes`` (clusterings so far, 0-dim int64).

Returns ``{"loss", "acc_i2t", "acc_t2i", "episodes"}``: accuracies (percent) of the student
scores' argmax against y_T / y_I, detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.losses.distillers._common import check_pair, check_positive, float32
from hirl_like.losses.distillers.protoclip_episode import EpisodeMemory, episode_prototypes
from hirl_like.registry import LOSSES


def _direction(z: Tensor, students: Tensor, teacher_centroids: Tensor, labels: Tensor, scale: Tensor, tau: float | None) -> tuple[Tensor, Tensor]:
    """(CE of one direction, accuracy percent)."""
    logits = scale * z @ students.T  # (B, K)
    if tau is None:
        loss = F.cross_entropy(logits, labels)
    else:
        targets = F.softmax(teacher_centroids[labels] @ teacher_centroids.T / tau, dim=1)
        loss = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    acc = (logits.detach().argmax(dim=1) == labels).float().mean() * 100.0
    return loss, acc


@LOSSES.register()
class ProtoCLIPLoss(nn.Module):
    """Args:
    dim: d, size of the projected embeddings (128).
    num_prototypes: K per modality (20,000).
    episode_size: pairs per episode (200,000); K <= episode_size.
    target_temperature: tau of the teacher's smoothed targets (0.01); None: one-hot targets.
    pbt: Prototype Back Translation (on, as the ProtoCLIP recipe).
    kmeans_iterations, kmeans_restarts: faiss k-means (20 and 3, ProtoCLIP's recipe).
    """

    image_centroids: Tensor
    text_centroids: Tensor
    image_students: Tensor
    text_students: Tensor
    episodes: Tensor

    def __init__(
        self,
        dim: int = 128,
        num_prototypes: int = 20000,
        episode_size: int = 200000,
        target_temperature: float | None = 0.01,
        pbt: bool = True,
        kmeans_iterations: int = 20,
        kmeans_restarts: int = 3,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_prototypes", num_prototypes), ("episode_size", episode_size),
                            ("kmeans_iterations", kmeans_iterations), ("kmeans_restarts", kmeans_restarts)):
            check_positive("ProtoCLIPLoss", name, value)
        if target_temperature is not None:
            check_positive("ProtoCLIPLoss", "target_temperature", target_temperature)
        if num_prototypes > episode_size:
            raise ValueError(f"ProtoCLIPLoss: num_prototypes={num_prototypes} is more prototypes than the "
                             f"episode_size={episode_size} embeddings k-means clusters.")
        self.k, self.tau, self.pbt = int(num_prototypes), target_temperature, bool(pbt)
        self.kmeans_iterations, self.kmeans_restarts = int(kmeans_iterations), int(kmeans_restarts)
        self.memory = EpisodeMemory(int(dim), int(episode_size))
        for name in ("image_centroids", "text_centroids", "image_students", "text_students"):
            self.register_buffer(name, torch.zeros(self.k, int(dim)))
        self.register_buffer("episodes", torch.zeros((), dtype=torch.long))

    @property
    def has_prototypes(self) -> bool:
        return int(self.episodes) > 0

    @torch.no_grad()
    def build_prototypes(self, seed: int) -> None:
        """Cluster the memory now (seed + 2 * episode index) and start counting the next episode."""
        protos = episode_prototypes(self.memory, self.k, seed + 2 * int(self.episodes), self.kmeans_iterations,
                                    self.kmeans_restarts, self.pbt)
        self.image_centroids.copy_(protos.image_centroids)
        self.text_centroids.copy_(protos.text_centroids)
        self.image_students.copy_(protos.image_students)
        self.text_students.copy_(protos.text_students)
        self.episodes.add_(1)
        self.memory.fresh.zero_()

    def forward(self, z_image: Tensor, z_text: Tensor, scale: Tensor, seed: int = 0) -> dict[str, Tensor]:
        """z_image, z_text: (B, d) projected embeddings (normalised here); scale: 0-dim, exponentiated."""
        check_pair(z_image, z_text, "ProtoCLIPLoss")
        if self.memory.ready:
            self.build_prototypes(seed)
        with float32(z_image):
            zi, zt = F.normalize(z_image.float(), dim=1), F.normalize(z_text.float(), dim=1)
            if self.has_prototypes:
                with torch.no_grad():
                    labels_t = (zt @ self.text_centroids.T).argmax(dim=1)
                    labels_i = (zi @ self.image_centroids.T).argmax(dim=1)
                s = scale.float()
                l_i2t, acc_i2t = _direction(zi, self.image_students, self.text_centroids, labels_t, s, self.tau)
                l_t2i, acc_t2i = _direction(zt, self.text_students, self.image_centroids, labels_i, s, self.tau)
                loss = (l_i2t + l_t2i) / 2
            else:
                loss = 0.0 * (zi.sum() + zt.sum() + scale.float())
                acc_i2t = acc_t2i = zi.new_zeros(())
        self.memory.add(zi.detach(), zt.detach())
        episodes = self.episodes.detach().float().clone()
        return {"loss": loss, "acc_i2t": acc_i2t, "acc_t2i": acc_t2i, "episodes": episodes}
