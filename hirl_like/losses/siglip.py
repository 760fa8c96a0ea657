"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023), with soft targets for Harmony."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hirl_like.distributed import all_gather_no_grad, all_gather_with_grad, get_rank, get_world_size
from hirl_like.losses.clip import check_contrastive_inputs
from hirl_like.registry import LOSSES


@LOSSES.register()
class SigLipLoss(nn.Module):
    """``loss = a * hard + (1 - a) * soft`` on the logits ``z = s * I_local @ T_all^T + b`` (B, N).

    - hard = ``-sum_ij logsigmoid(y_ij z_ij) / B``, y = +1 for the matching pair (column rank*B + i),
      -1 elsewhere.
    - soft (our design; the public Harmony code crashes here): binary cross-entropy of the sigmoid
      against pair targets built from the EMA teachers,
      ``q = (softmax_rows(S) + softmax_cols(S)) / 2`` restricted to the local rows, where
      ``S = I_t_all @ T_t_all^T / soft_temperature`` (N, N): the mean of the image->text and the
      (transposed) text->image distributions of the teachers, each normalised over the gathered batch.
      ``soft = -sum_ij [q_ij logsigmoid(z_ij) + (1 - q_ij) logsigmoid(-z_ij)] / B``. If q is the
      identity this equals hard.

    Distributed: each rank scores its B local images against all N = world*B texts (texts gathered
    with gradient), so the N x N pair matrix is split into row blocks, one per rank, and every pair is
    counted exactly once. Each rank divides by its own B, so the MEAN of the per-rank losses equals
    the single-process loss on the concatenated batch (``-sum over N x N / N``), and DDP's gradient
    averaging reproduces that process's gradient (the same convention as ClipLoss and open_clip).
    All ranks must pass the same B. Similarities are computed in float32 with autocast disabled.

    Returns: {"loss", "hard", ["soft"], "logit_scale", "logit_bias"}; all but "loss" detached.
    """

    def __init__(self, soft_temperature: float = 0.1, gather: bool = True) -> None:
        super().__init__()
        if not soft_temperature > 0:
            raise ValueError(f"soft_temperature must be > 0, got {soft_temperature}.")
        self.soft_temperature = soft_temperature
        self.gather = gather

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor,
        hard_weight: float = 1.0,
        teacher_image_features: Tensor | None = None,
        teacher_text_features: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """
        Args:
            image_features, text_features: (B, D) L2-normalised student embeddings on this rank.
            logit_scale: 0-dim, already exponentiated (s). logit_bias: 0-dim (b).
            hard_weight: a in [0, 1]; a < 1 needs both teacher embeddings, (B, D_t) L2-normalised.
        """
        has_teacher = check_contrastive_inputs(
            image_features, text_features, hard_weight, teacher_image_features, teacher_text_features
        )
        rank, world = (get_rank(), get_world_size()) if self.gather else (0, 1)
        b = image_features.shape[0]
        with torch.autocast(device_type=image_features.device.type, enabled=False):
            img, txt = image_features.float(), text_features.float()
            s, bias = logit_scale.float(), logit_bias.float()
            all_txt = all_gather_with_grad(txt) if world > 1 else txt
            z = s * img @ all_txt.T + bias  # (B, N)
            positive = F.one_hot(torch.arange(b, device=z.device) + rank * b, z.shape[1]).bool()
            signs = torch.where(positive, 1.0, -1.0)
            hard = -F.logsigmoid(signs * z).sum() / b
            out = {"hard": hard.detach(), "logit_scale": s.detach(), "logit_bias": bias.detach()}
            loss = hard
            if has_teacher:
                q = self._soft_targets(teacher_image_features, teacher_text_features, rank, world)
                soft = -(q * F.logsigmoid(z) + (1.0 - q) * F.logsigmoid(-z)).sum() / b
                out["soft"] = soft.detach()
                if hard_weight < 1.0:  # with a = 1 the soft term is a diagnostic only
                    loss = hard_weight * hard + (1.0 - hard_weight) * soft
        return {"loss": loss, **out}

    @torch.no_grad()
    def _soft_targets(self, teacher_img: Tensor, teacher_txt: Tensor, rank: int, world: int) -> Tensor:
        """(B, N) pair targets in [0, 1] for this rank's image rows."""
        t_img, t_txt = teacher_img.detach().float(), teacher_txt.detach().float()
        all_t_img = all_gather_no_grad(t_img) if world > 1 else t_img
        all_t_txt = all_gather_no_grad(t_txt) if world > 1 else t_txt
        sim = all_t_img @ all_t_txt.T / self.soft_temperature  # (N, N), row = image, column = text
        b = t_img.shape[0]
        rows = slice(rank * b, (rank + 1) * b)
        image_to_text = F.softmax(sim[rows], dim=1)  # each image's distribution over texts
        # column j of softmax over dim 0 is text j's distribution over images = (softmax(T_t I_t^T))^T
        text_to_image = F.softmax(sim, dim=0)[rows]
        return (image_to_text + text_to_image) / 2
