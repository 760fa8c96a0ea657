"""Harmony's text self-distillation: iBOT's masked-patch loss applied to caption tokens."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hirl_like.losses.distill_ce import check_momentum, check_positive, ema_update_center_, masked_mean_ce
from hirl_like.registry import LOSSES


@LOSSES.register()
class TextDistillLoss(nn.Module):
    """Per-token centred, sharpened CE between the EMA text teacher (unmasked caption) and the student
    (masked caption), scored at the masked positions only.

    ``loss = mean_captions [ sum_{l masked} H(t_l, s_l) / max(#masked, 1) ]`` with
    ``H(t, s) = -sum_k softmax((t - c)/T_t)[k] log_softmax(s/T_s)[k]``, i.e. normalised per caption
    exactly like iBOT's patch term (a caption with nothing masked contributes 0 and still counts).
    Scored positions are ``mask & valid``.

    Centre: ``c <- m c + (1 - m) mean(t over valid tokens)`` from the teacher's RAW outputs over the
    real (non-padding) tokens of every rank, each rank weighted by its token count. The public Harmony
    code averages softmax outputs and includes padding; both are fixed here.

    Args:
        out_dim: K of the text head. student_temp: T_s (0.1). center_momentum: m (0.9).
    """

    def __init__(self, out_dim: int = 2048, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        check_positive("out_dim", out_dim)
        check_positive("student_temp", student_temp)
        check_momentum("center_momentum", center_momentum)
        self.out_dim = out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, out_dim))

    def forward(
        self,
        student_out: Tensor,
        teacher_out: Tensor,
        mask: Tensor,
        valid: Tensor,
        teacher_temp: float,
    ) -> dict[str, Tensor]:
        """
        Args:
            student_out: (B, L, K) student head outputs, or only the scored rows
                ``full[mask & valid]`` as (#scored, K) (a head run on the masked tokens alone).
            teacher_out: (B, L, K) raw teacher head outputs (no grad).
            mask: (B, L) bool, True at masked positions. valid: (B, L) bool, True at real tokens.
            teacher_temp: T_t.
        Returns: {"loss"}.
        """
        if student_out.shape[-1] != self.out_dim:
            raise ValueError(f"head output size {student_out.shape[-1]} does not match out_dim={self.out_dim}.")
        if valid.shape != mask.shape:
            raise ValueError(f"valid has shape {tuple(valid.shape)} but mask has {tuple(mask.shape)}.")
        valid = valid.bool()
        loss = masked_mean_ce(
            student_out, teacher_out, self.center, mask.bool() & valid, self.student_temp, teacher_temp
        )
        ema_update_center_(self.center, teacher_out, self.center_momentum, select=valid)
        return {"loss": loss}
