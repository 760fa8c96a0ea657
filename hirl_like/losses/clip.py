"""CLIP's symmetric InfoNCE, with Harmony's soft targets from EMA teachers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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

    Returns: {"loss", "hard", ["soft" when teachers are given], "logit_scale"}; all but "loss" detached.
    """

    def __init__(self, soft_temperature: float = 0.1, gather: bool = True) -> None:
        super().__init__()
        if not soft_temperature > 0:
            raise ValueError(f"soft_temperature must be > 0, got {soft_temperature}.")
        self.soft_temperature = soft_temperature
        self.gather = gather

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

    @torch.no_grad()
    def _soft_targets(self, teacher_img: Tensor, teacher_txt: Tensor, world: int) -> tuple[Tensor, Tensor]:
        """Row-wise teacher distributions (B, world*B) for image->text and text->image."""
        t_img, t_txt = teacher_img.detach().float(), teacher_txt.detach().float()
        all_t_img = all_gather_no_grad(t_img) if world > 1 else t_img
        all_t_txt = all_gather_no_grad(t_txt) if world > 1 else t_txt
        q_i2t = F.softmax(t_img @ all_t_txt.T / self.soft_temperature, dim=-1)
        q_t2i = F.softmax(t_txt @ all_t_img.T / self.soft_temperature, dim=-1)
        return q_i2t, q_t2i


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
