"""iBOT objective (Zhou et al. 2022): [CLS] cross-view self-distillation + masked-patch self-distillation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hirl_like.losses.distill_ce import (
    check_momentum,
    check_positive,
    check_views,
    cross_view_ce,
    ema_update_center_,
    masked_mean_ce,
    teacher_probs,
)
from hirl_like.evaluation.collapse import target_entropy_terms
from hirl_like.registry import LOSSES


@LOSSES.register()
class IBOTLoss(nn.Module):
    """``loss = lambda1 * cls + lambda2 * patch`` (Harmony eq. 9 uses lambda1 = lambda2 = 0.5).

    With ``H(t, s; c, T_t) = -sum_k softmax((t - c)/T_t)[k] log_softmax(s/T_s)[k]``:

    - cls: for every teacher global view q and student view v != q (G global + L local views),
      ``mean_b H(t_q, s_v; center, teacher_temp)``, averaged over the G*(G+L) - G pairs.
    - patch: only v == q (global views); per image, ``sum over masked patches of
      H(t_q, s_q; center2, teacher_temp2) / max(#masked, 1)``; mean over the G*B images (= mean over
      images, then over the G views). An image with no masked patch contributes 0 and still counts.

    The returned "cls" and "patch" are the unweighted terms (detached). After the loss is computed,
    the buffers are EMA-updated from the teacher's raw outputs averaged over batch and ranks:
    ``center <- m1 center + (1 - m1) mean_rows(teacher_cls)``,
    ``center2 <- m2 center2 + (1 - m2) mean_{images, patches}(teacher_patch)`` (all patches, as iBOT).

    Args:
        out_dim: K of the [CLS] head (8192); patch_out_dim: K2 of the patch head (8192).
        global_crops: G (2); local_crops: L (student-only views).
        student_temp: T_s (0.1). center_momentum / center_momentum2: m1 / m2 (0.9).
        lambda1 / lambda2: weights of the cls / patch terms. ``global_crops + local_crops`` may be 1
        only with ``lambda1 = 0`` (no cross-view pair exists; cls is then reported as 0).
    """

    def __init__(
        self,
        out_dim: int = 8192,
        patch_out_dim: int = 8192,
        global_crops: int = 2,
        local_crops: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        center_momentum2: float = 0.9,
        lambda1: float = 0.5,
        lambda2: float = 0.5,
    ) -> None:
        super().__init__()
        check_positive("out_dim", out_dim)
        check_positive("patch_out_dim", patch_out_dim)
        check_positive("global_crops", global_crops)
        if local_crops < 0:
            raise ValueError(f"local_crops must be >= 0, got {local_crops}.")
        check_positive("student_temp", student_temp)
        check_momentum("center_momentum", center_momentum)
        check_momentum("center_momentum2", center_momentum2)
        if lambda1 < 0 or lambda2 < 0:
            raise ValueError(f"lambda1 and lambda2 must be >= 0, got {lambda1}, {lambda2}.")
        if global_crops + local_crops < 2 and lambda1 > 0:
            raise ValueError(
                "the cls term pairs different views: set global_crops + local_crops >= 2, or lambda1=0 "
                "for a patch-only loss."
            )
        self.out_dim = out_dim
        self.patch_out_dim = patch_out_dim
        self.global_crops = global_crops
        self.local_crops = local_crops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.center_momentum2 = center_momentum2
        self.lambda1 = lambda1
        self.lambda2 = lambda2
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, patch_out_dim))

    def forward(
        self,
        student_cls: Tensor,
        student_patch: Tensor,
        teacher_cls: Tensor,
        teacher_patch: Tensor,
        student_masks: Tensor,
        teacher_temp: float,
        teacher_temp2: float,
    ) -> dict[str, Tensor]:
        """
        Args:
            student_cls: ((G+L)*B, K) head logits, view-major; views 0..G-1 are the global crops.
            student_patch: (G*B, N, K2) patch logits of the (masked) global crops, or only those
                at the masked patches, ``full[student_masks]`` as (#masked, K2) (same loss, and the
                student head need not run on patches that are never scored).
            teacher_cls: (G*B, K), teacher_patch: (G*B, N, K2): raw teacher outputs (no grad).
            student_masks: (G*B, N) bool, True = masked patch.
            teacher_temp / teacher_temp2: teacher temperatures for cls / patch targets.

        Returns: {"loss", "cls", "patch", "cls_target_entropy", "cls_target_entropy_ratio",
        "cls_batch_target_entropy"} (the last three: mean entropy in nats of the centred, sharpened
        [CLS] targets, ln K when uniform; that over ln K; the entropy of their batch mean, 0 when
        every sample picks one prototype); only "loss" carries gradient.
        """
        g, n_views = self.global_crops, self.global_crops + self.local_crops
        check_views(student_cls, teacher_cls, g, n_views, self.out_dim)
        rows_ok = student_patch.dim() == 2 or student_patch.shape[0] == teacher_cls.shape[0]
        if not rows_ok or student_patch.shape[-1] != self.patch_out_dim:
            raise ValueError(
                f"student_patch has shape {tuple(student_patch.shape)}; expected (G*B={teacher_cls.shape[0]}, "
                f"N, patch_out_dim={self.patch_out_dim}) or the masked rows (#masked, patch_out_dim)."
            )
        if n_views >= 2:
            cls = cross_view_ce(student_cls, teacher_cls, self.center, g, self.student_temp, teacher_temp)
        else:
            cls = student_cls.float().sum() * 0.0  # no pair to compare; keeps the graph valid
        patch = masked_mean_ce(
            student_patch, teacher_patch, self.center2, student_masks, self.student_temp, teacher_temp2
        )
        loss = self.lambda1 * cls + self.lambda2 * patch
        with torch.no_grad():  # how peaked the [CLS] targets are: ln K when they are uniform (collapse)
            p_t = teacher_probs(teacher_cls, self.center, teacher_temp)
            target_entropy = -(p_t * torch.log(p_t.clamp_min(1e-12))).sum(dim=-1).mean()
            terms = target_entropy_terms(p_t)  # hirl_like.evaluation.collapse
        ema_update_center_(self.center, teacher_cls, self.center_momentum)
        ema_update_center_(self.center2, teacher_patch, self.center_momentum2)
        return {"loss": loss, "cls": cls.detach(), "patch": patch.detach(), "cls_target_entropy": target_entropy,
                "cls_target_entropy_ratio": terms["target_entropy_ratio"],
                "cls_batch_target_entropy": terms["batch_target_entropy"]}
