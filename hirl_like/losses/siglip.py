"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023), with soft targets for Harmony."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from hirl_like.distributed import all_gather_no_grad, all_gather_with_grad, get_rank, get_world_size
from hirl_like.losses.clip import check_chunk_size, check_contrastive_inputs
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

    ``chunk_size`` (None = off): as :class:`~hirl_like.losses.clip.ClipLoss`, the (B, N) logits are
    computed in checkpointed row blocks of ``chunk_size`` rows, so memory holds one (c, N) block at a
    time. Every pair's term is elementwise, so block sums equal the full sum. The soft targets'
    text->image half normalises over images (columns of S), so its per-column log-normaliser (N,)
    is computed first (no grad) and each block rebuilds its own rows of q from it.

    Returns: {"loss", "hard", ["soft"], "logit_scale", "logit_bias"}; all but "loss" detached.
    """

    def __init__(self, soft_temperature: float = 0.1, gather: bool = True, chunk_size: int | None = None) -> None:
        super().__init__()
        if not soft_temperature > 0:
            raise ValueError(f"soft_temperature must be > 0, got {soft_temperature}.")
        self.soft_temperature = soft_temperature
        self.gather = gather
        self.chunk_size = check_chunk_size(chunk_size)

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
        if self.chunk_size is not None and self.chunk_size < b:
            return self._chunked(image_features, text_features, logit_scale, logit_bias, hard_weight,
                                 teacher_image_features, teacher_text_features, rank, world)
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

    def _chunked(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor,
        hard_weight: float,
        teacher_image_features: Tensor | None,
        teacher_text_features: Tensor | None,
        rank: int,
        world: int,
    ) -> dict[str, Tensor]:
        """:meth:`forward`'s loss with the logits in row blocks of ``chunk_size`` (class docstring)."""
        b, c = image_features.shape[0], int(self.chunk_size)  # type: ignore[arg-type]
        has_teacher = teacher_image_features is not None
        with torch.autocast(device_type=image_features.device.type, enabled=False):
            img, txt = image_features.float(), text_features.float()
            s, bias = logit_scale.float(), logit_bias.float()
            all_txt = all_gather_with_grad(txt) if world > 1 else txt
            t_rows = all_t_txt = column_lse = None
            if has_teacher:
                with torch.no_grad():
                    t_img = teacher_image_features.detach().float()  # type: ignore[union-attr]
                    all_t_img = all_gather_no_grad(t_img) if world > 1 else t_img
                    t_txt = teacher_text_features.detach().float()  # type: ignore[union-attr]
                    all_t_txt = all_gather_no_grad(t_txt) if world > 1 else t_txt
                    t_rows = all_t_img[rank * b:(rank + 1) * b]
                    column_lse = self._column_logsumexp(all_t_img, all_t_txt, c)
            record = torch.is_grad_enabled()
            hard = img.new_zeros(())
            soft = img.new_zeros(())
            for start in range(0, b, c):
                block = slice(start, start + c)
                args = (img[block], all_txt, s, bias, rank * b + start,
                        t_rows[block] if t_rows is not None else None, all_t_txt, column_lse)
                h, q = checkpoint(self._block_terms, *args, use_reentrant=False) if record else self._block_terms(*args)
                hard = hard + h
                soft = soft + q
            hard = hard / b
            out = {"hard": hard.detach(), "logit_scale": s.detach(), "logit_bias": bias.detach()}
            loss = hard
            if has_teacher:
                soft = soft / b
                out["soft"] = soft.detach()
                if hard_weight < 1.0:
                    loss = hard_weight * hard + (1.0 - hard_weight) * soft
        return {"loss": loss, **out}

    @torch.no_grad()
    def _column_logsumexp(self, all_t_img: Tensor, all_t_txt: Tensor, chunk: int) -> Tensor:
        """(N,) ``logsumexp`` over images of each text column of ``S = I_t T_t^T / T``, in row blocks."""
        lse = None
        for start in range(0, all_t_img.shape[0], chunk):
            part = torch.logsumexp(all_t_img[start:start + chunk] @ all_t_txt.T / self.soft_temperature, dim=0)
            lse = part if lse is None else torch.logaddexp(lse, part)
        return lse  # type: ignore[return-value]

    def _block_terms(
        self,
        rows: Tensor,
        all_txt: Tensor,
        scale: Tensor,
        bias: Tensor,
        first_positive: int,
        teacher_rows: Tensor | None,
        all_t_txt: Tensor | None,
        column_lse: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """(hard sum, soft sum) over one block: rows (c, D) images, all_txt (N, D); the positive of
        row i is column ``first_positive + i``. With teachers, teacher_rows (c, D_t), all_t_txt
        (N, D_t) and column_lse (N,) give the block's pair targets q (c, N)."""
        z = scale * rows @ all_txt.T + bias  # (c, N)
        columns = torch.arange(rows.shape[0], device=z.device) + first_positive
        positive = F.one_hot(columns, z.shape[1]).bool()
        hard = -F.logsigmoid(torch.where(positive, z, -z)).sum()
        if teacher_rows is None or all_t_txt is None or column_lse is None:
            return hard, hard.new_zeros(())
        with torch.no_grad():
            sim = teacher_rows @ all_t_txt.T / self.soft_temperature  # (c, N)
            q = (F.softmax(sim, dim=1) + torch.exp(sim - column_lse)) / 2
        soft = -(q * F.logsigmoid(z) + (1.0 - q) * F.logsigmoid(-z)).sum()
        return hard, soft

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
