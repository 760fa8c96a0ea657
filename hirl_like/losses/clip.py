"""CLIP's symmetric InfoNCE, with Harmony's soft targets from EMA teachers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from hirl_like.distributed import all_gather_no_grad, all_gather_with_grad, get_rank, get_world_size
from hirl_like.registry import LOSSES


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``mean_rows -sum_j targets[i, j] * log_softmax(logits)[i, j]`` (probability targets), float32."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


@LOSSES.register()
class ClipLoss(nn.Module):
    """``loss = a * hard + (1 - a) * soft`` (Harmony eq. 2-4; a = ``hard_weight``, 1 -> 0.2 in Harmony).

    On each rank (open_clip "local loss"): ``logits_i2t = s * I_local @ T_all^T`` and
    ``logits_t2i = s * T_local @ I_all^T``, shape (B, world*B), where ``*_all`` are the embeddings of
    every rank (the local block carries gradient, others come through ``all_gather_with_grad``) and
    the positives sit at ``labels = arange(B) + rank*B``.

    - hard = (CE(logits_i2t, labels) + CE(logits_t2i, labels)) / 2.
    - soft (only with teachers) = (CE(logits_i2t, q) + CE(logits_t2i, q')) / 2 against probability
      targets ``q = softmax(I_t_local @ T_t_all^T / soft_temperature)`` and
      ``q' = softmax(T_t_local @ I_t_all^T / soft_temperature)`` (row-wise, EMA-teacher embeddings).

    Each rank's loss is a mean over its own B rows, so the mean over ranks equals the loss of one
    process on the concatenated batch, and DDP's gradient averaging gives that process's gradient.
    All ranks must pass the same B. ``gather=False`` scores each rank's batch on its own.

    The similarity matmuls run in float32 with autocast disabled: the logits reach s = 100.

    ``chunk_size`` (None = off): the two (B, N) logit matrices, their softmax and their gradients
    are the loss's memory, ~5 x 4 bytes x B x N per direction (N = world x B: 23 GiB at a global
    batch of 32k). With ``chunk_size = c`` each direction is computed in row blocks of c rows,
    each block under ``torch.utils.checkpoint`` (``use_reentrant=False``), so the forward keeps no
    block's logits and the backward recomputes one (c, N) block at a time: peak memory c x N per
    direction instead of B x N, for one extra (c x N x D) matmul per block in the backward. Each
    row's cross-entropy involves only its own row of logits (and, with teachers, its own row of
    targets, recomputed inside the block), so the loss and the gradients equal the unchunked ones
    up to float summation order. ``chunk_size >= B`` runs unchunked.

    Returns: {"loss", "hard", ["soft" when teachers are given], "logit_scale"}; all but "loss" detached.
    """

    def __init__(self, soft_temperature: float = 0.1, gather: bool = True, chunk_size: int | None = None) -> None:
        super().__init__()
        if not soft_temperature > 0:
            raise ValueError(f"soft_temperature must be > 0, got {soft_temperature}.")
        self.soft_temperature = soft_temperature
        self.gather = gather
        self.chunk_size = check_chunk_size(chunk_size)

    def _world(self) -> tuple[int, int]:
        """(rank, world size) used for gathering; (0, 1) when not gathering."""
        return (get_rank(), get_world_size()) if self.gather else (0, 1)

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        hard_weight: float = 1.0,
        teacher_image_features: Tensor | None = None,
        teacher_text_features: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """
        Args:
            image_features, text_features: (B, D) L2-normalised student embeddings on this rank.
            logit_scale: 0-dim tensor, already exponentiated (s, not log s).
            hard_weight: a in [0, 1]; a < 1 needs both teacher embeddings.
            teacher_image_features, teacher_text_features: (B, D) L2-normalised EMA-teacher embeddings.
        """
        has_teacher = check_contrastive_inputs(image_features, text_features, hard_weight, teacher_image_features,
                                    teacher_text_features)
        rank, world = self._world()
        b = image_features.shape[0]
        if self.chunk_size is not None and self.chunk_size < b:
            return self._chunked(image_features, text_features, logit_scale, hard_weight, teacher_image_features,
                                 teacher_text_features, rank, world)
        with torch.autocast(device_type=image_features.device.type, enabled=False):
            img, txt, s = image_features.float(), text_features.float(), logit_scale.float()
            all_img = all_gather_with_grad(img) if world > 1 else img
            all_txt = all_gather_with_grad(txt) if world > 1 else txt
            logits_i2t = s * img @ all_txt.T  # (B, world*B)
            logits_t2i = s * txt @ all_img.T
            labels = torch.arange(b, device=img.device) + rank * b
            hard = (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels)) / 2
            out = {"hard": hard.detach(), "logit_scale": s.detach()}
            loss = hard
            if has_teacher:
                q_i2t, q_t2i = self._soft_targets(teacher_image_features, teacher_text_features, world)
                soft = (soft_cross_entropy(logits_i2t, q_i2t) + soft_cross_entropy(logits_t2i, q_t2i)) / 2
                out["soft"] = soft.detach()
                if hard_weight < 1.0:  # with a = 1 the soft term is a diagnostic only
                    loss = hard_weight * hard + (1.0 - hard_weight) * soft
        return {"loss": loss, **out}

    def _chunked(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        hard_weight: float,
        teacher_image_features: Tensor | None,
        teacher_text_features: Tensor | None,
        rank: int,
        world: int,
    ) -> dict[str, Tensor]:
        """The loss of :meth:`forward` with each direction's logits computed in row blocks of
        ``chunk_size`` rows (see the class docstring); same arguments, same outputs."""
        b, c = image_features.shape[0], int(self.chunk_size)  # type: ignore[arg-type]
        has_teacher = teacher_image_features is not None
        with torch.autocast(device_type=image_features.device.type, enabled=False):
            img, txt, s = image_features.float(), text_features.float(), logit_scale.float()
            all_img = all_gather_with_grad(img) if world > 1 else img
            all_txt = all_gather_with_grad(txt) if world > 1 else txt
            labels = torch.arange(b, device=img.device) + rank * b
            t_img = t_txt = all_t_img = all_t_txt = None
            if has_teacher:
                assert teacher_image_features is not None and teacher_text_features is not None
                t_img, t_txt = teacher_image_features.detach().float(), teacher_text_features.detach().float()
                all_t_img = all_gather_no_grad(t_img) if world > 1 else t_img
                all_t_txt = all_gather_no_grad(t_txt) if world > 1 else t_txt
            record = torch.is_grad_enabled()
            hard = img.new_zeros(())
            soft = img.new_zeros(())
            # image -> text rows (local images against every text), then text -> image rows
            directions = ((img, all_txt, t_img, all_t_txt), (txt, all_img, t_txt, all_t_img))
            for rows, columns, t_rows, t_columns in directions:
                for start in range(0, b, c):
                    block = slice(start, start + c)
                    args = (rows[block], columns, s, labels[block],
                            t_rows[block] if t_rows is not None else None, t_columns)
                    if record:
                        h, q = checkpoint(self._block_terms, *args, use_reentrant=False)
                    else:
                        h, q = self._block_terms(*args)
                    hard = hard + h
                    soft = soft + q
            hard = hard / (2 * b)  # mean over rows, mean over the two directions
            out = {"hard": hard.detach(), "logit_scale": s.detach()}
            loss = hard
            if has_teacher:
                soft = soft / (2 * b)
                out["soft"] = soft.detach()
                if hard_weight < 1.0:
                    loss = hard_weight * hard + (1.0 - hard_weight) * soft
        return {"loss": loss, **out}

    def _block_terms(
        self,
        rows: Tensor,
        columns: Tensor,
        scale: Tensor,
        labels: Tensor,
        teacher_rows: Tensor | None,
        teacher_columns: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """(sum of hard CE, sum of soft CE) over one block of rows, float32.

        rows: (c, D) student embeddings of the block; columns: (N, D) the other modality, all
        ranks; labels: (c,) positive columns. With teachers, teacher_rows (c, D_t) and
        teacher_columns (N, D_t) give the block's targets ``softmax(rows_t @ columns_t^T / T)``,
        recomputed here so that no (B, N) target matrix outlives the forward.
        """
        logits = scale * rows @ columns.T  # (c, N)
        hard = F.cross_entropy(logits, labels, reduction="sum")
        if teacher_rows is None or teacher_columns is None:
            return hard, hard.new_zeros(())
        with torch.no_grad():
            targets = F.softmax(teacher_rows @ teacher_columns.T / self.soft_temperature, dim=-1)
        soft = -(targets * F.log_softmax(logits, dim=-1)).sum()
        return hard, soft

    @torch.no_grad()
    def _soft_targets(self, teacher_img: Tensor, teacher_txt: Tensor, world: int) -> tuple[Tensor, Tensor]:
        """Row-wise teacher distributions (B, world*B) for image->text and text->image."""
        t_img, t_txt = teacher_img.detach().float(), teacher_txt.detach().float()
        all_t_img = all_gather_no_grad(t_img) if world > 1 else t_img
        all_t_txt = all_gather_no_grad(t_txt) if world > 1 else t_txt
        q_i2t = F.softmax(t_img @ all_t_txt.T / self.soft_temperature, dim=-1)
        q_t2i = F.softmax(t_txt @ all_t_img.T / self.soft_temperature, dim=-1)
        return q_i2t, q_t2i


def check_chunk_size(chunk_size: int | None) -> int | None:
    """Validate a contrastive loss's ``chunk_size``: None (off) or an int >= 1."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None (unchunked) or an int >= 1 (rows per logit block), got {chunk_size!r}.")
    return chunk_size


def check_contrastive_inputs(
    image_features: Tensor,
    text_features: Tensor,
    hard_weight: float,
    teacher_image_features: Tensor | None,
    teacher_text_features: Tensor | None,
) -> bool:
    """Validate shapes and the hard/soft weighting; return whether teacher embeddings were given.

    Shared by ClipLoss and SigLipLoss.
    """
    if image_features.dim() != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            f"image_features {tuple(image_features.shape)} and text_features {tuple(text_features.shape)} "
            "must both be (B, D)."
        )
    if not 0.0 <= hard_weight <= 1.0:
        raise ValueError(f"hard_weight must lie in [0, 1], got {hard_weight}.")
    if (teacher_image_features is None) != (teacher_text_features is None):
        raise ValueError("pass both teacher_image_features and teacher_text_features, or neither.")
    has_teacher = teacher_image_features is not None
    if hard_weight < 1.0 and not has_teacher:
        raise ValueError(
            f"hard_weight={hard_weight} < 1 mixes in soft targets, which need teacher_image_features and "
            "teacher_text_features (EMA-teacher embeddings); pass them or set hard_weight=1."
        )
    if has_teacher:
        for name, t in (("teacher_image_features", teacher_image_features),
                        ("teacher_text_features", teacher_text_features)):
            if t.shape[0] != image_features.shape[0] or t.dim() != 2:
                raise ValueError(f"{name} has shape {tuple(t.shape)}; expected (B={image_features.shape[0]}, D_t).")
    return has_teacher
