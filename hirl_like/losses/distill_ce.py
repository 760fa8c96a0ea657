"""Centred and sharpened cross-entropy shared by the DINO, iBOT and text self-distillation losses.

The teacher's raw head outputs ``t`` become targets ``p_t = softmax((t - c) / T_t)``: subtracting the
running centre ``c`` keeps one dimension from dominating, the low temperature ``T_t`` keeps the
targets from going uniform (DINO, Caron et al. 2021, Sec. 3.1). The student gives
``log p_s = log_softmax(s / T_s)`` and each row costs ``H(p_t, p_s) = -sum_k p_t[k] log p_s[k]``.

Everything here runs in float32 (inputs are cast with ``.float()``), so it is safe under autocast.
The centre is updated from the teacher's RAW outputs, averaged over every rank and weighted by how
many rows each rank contributes (``ema_update_center_``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hirl_like.distributed import all_reduce_sum


def check_positive(name: str, value: float) -> None:
    """Raise ValueError unless ``value`` > 0 (temperatures, sizes)."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")


def check_momentum(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (EMA momentum), got {value!r}.")


def check_views(student_cls: Tensor, teacher_cls: Tensor, global_crops: int, n_views: int, out_dim: int) -> None:
    """Shapes must match the configured crop counts (a wrong count would silently pair wrong views)."""
    if student_cls.shape[-1] != out_dim or teacher_cls.shape[-1] != out_dim:
        raise ValueError(
            f"head output size {student_cls.shape[-1]} (student) / {teacher_cls.shape[-1]} (teacher) "
            f"does not match out_dim={out_dim}."
        )
    b, rem = divmod(teacher_cls.shape[0], global_crops)
    if rem or student_cls.shape[0] != n_views * b:
        raise ValueError(
            f"expected teacher rows = global_crops*B and student rows = (global+local crops)*B; got teacher "
            f"{teacher_cls.shape[0]} rows for {global_crops} global crops and student {student_cls.shape[0]} "
            f"rows for {n_views} views."
        )


def teacher_probs(teacher_logits: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    """``softmax((t - c) / T_t)`` over the last dim, float32, detached. Shapes: (..., K), c broadcasts."""
    check_positive("teacher_temp", teacher_temp)
    return F.softmax((teacher_logits.detach().float() - center) / teacher_temp, dim=-1)


def student_log_probs(student_logits: Tensor, student_temp: float) -> Tensor:
    """``log_softmax(s / T_s)`` over the last dim, float32. Shape (..., K)."""
    return F.log_softmax(student_logits.float() / student_temp, dim=-1)


def centered_sharpened_ce(
    student_logits: Tensor,
    teacher_logits: Tensor,
    center: Tensor,
    student_temp: float,
    teacher_temp: float,
) -> Tensor:
    """Per-row ``-sum_k softmax((t - c)/T_t)[k] * log_softmax(s/T_s)[k]``: (..., K) -> (...)."""
    p_t = teacher_probs(teacher_logits, center, teacher_temp)
    return -(p_t * student_log_probs(student_logits, student_temp)).sum(dim=-1)


def cross_view_ce(
    student_logits: Tensor,
    teacher_logits: Tensor,
    center: Tensor,
    global_crops: int,
    student_temp: float,
    teacher_temp: float,
) -> Tensor:
    """DINO / iBOT [CLS] term: mean over pairs (teacher view q, student view v != q) of the batch-mean CE.

    Args:
        student_logits: (V*B, K), view-major (rows ``v*B:(v+1)*B`` are view ``v``); the first
            ``global_crops`` views are the global crops the teacher also saw, in the same order.
        teacher_logits: (G*B, K) raw teacher outputs of the G global crops, view-major.
        center: (1, K) running centre of the teacher outputs.

    Returns a 0-dim float32 tensor ``sum_{q<G} sum_{v!=q} mean_b H(p_t[q,b], p_s[v,b]) / (G*V - G)``.
    """
    g = global_crops
    if teacher_logits.shape[0] % g:
        raise ValueError(f"teacher_logits has {teacher_logits.shape[0]} rows, not a multiple of global_crops={g}.")
    b = teacher_logits.shape[0] // g
    if b == 0 or student_logits.shape[0] % b:
        raise ValueError(
            f"student_logits has {student_logits.shape[0]} rows; expected a multiple of the per-view batch {b} "
            f"(teacher rows {teacher_logits.shape[0]} / global_crops {g})."
        )
    v = student_logits.shape[0] // b
    if v < g:
        raise ValueError(f"student has {v} views but the teacher has {g} global views; the student must see them all.")
    n_pairs = g * v - g
    if n_pairs == 0:
        raise ValueError("cross-view loss needs at least two views (global_crops + local_crops >= 2).")
    k = student_logits.shape[-1]
    p_t = teacher_probs(teacher_logits, center, teacher_temp).view(g, b, k)
    log_p_s = student_log_probs(student_logits, student_temp).view(v, b, k)
    # sum over pairs v != q = (sum over all (q, v)) - (sum over v == q). The full double sum factorises
    # into (sum_q p_q) . (sum_v log p_v), so the cost is O(V) products instead of O(G*V).
    all_pairs = (p_t.sum(0) * log_p_s.sum(0)).sum(-1).mean()
    same_view = (p_t * log_p_s[:g]).sum(-1).mean(-1).sum()
    return -(all_pairs - same_view) / n_pairs


def masked_mean_ce(
    student_logits: Tensor,
    teacher_logits: Tensor,
    center: Tensor,
    mask: Tensor,
    student_temp: float,
    teacher_temp: float,
) -> Tensor:
    """iBOT patch-style term: per item, sum of the per-token CE over masked tokens / max(#masked, 1);
    then the mean over items (items with nothing masked contribute 0 but still count).

    Args:
        student_logits: (M, N, K) per-token head outputs of M images or captions, or only the
            scored rows ``full[mask]`` as (#masked, K) in row-major mask order: a head applied to
            the masked tokens alone gives the same loss without its work on unscored tokens.
        teacher_logits: (M, N, K) per-token teacher outputs.
        center: broadcastable to (1, K) after selection, e.g. (1, 1, K).
        mask: (M, N) bool, True where the token is masked (the only positions that are scored).

    Only the masked rows go through softmax / log_softmax: at iBOT's ratios that skips most of the
    (M*N, K) work and memory (the boolean selection costs one host sync).
    """
    mask = mask.bool()
    selected = student_logits.dim() == 2
    if mask.shape != teacher_logits.shape[:-1] or (not selected and teacher_logits.shape != student_logits.shape):
        raise ValueError(
            f"shape mismatch: student {tuple(student_logits.shape)}, teacher {tuple(teacher_logits.shape)}, "
            f"mask {tuple(mask.shape)}; expected (M, N, K) or (#masked, K), (M, N, K), (M, N)."
        )
    k = teacher_logits.shape[-1]
    if selected:  # full[mask] always has the right rows; pre-selected rows must be checked
        n_masked = int(mask.sum())
        if student_logits.shape != (n_masked, k):
            raise ValueError(f"{student_logits.shape[0]} selected student rows for {n_masked} masked tokens.")
    student_rows = student_logits if selected else student_logits[mask]
    per_token = centered_sharpened_ce(
        student_rows, teacher_logits[mask], center.reshape(1, k), student_temp, teacher_temp
    )  # (#masked,)
    per_item_weight = 1.0 / mask.sum(dim=-1, keepdim=True).clamp(min=1).float()  # (M, 1)
    weights = per_item_weight.expand_as(mask)[mask]
    return (per_token * weights).sum() / mask.shape[0]


@torch.no_grad()
def ema_update_center_(
    center: Tensor,
    teacher_logits: Tensor,
    momentum: float,
    select: Tensor | None = None,
) -> None:
    """In place: ``c <- m * c + (1 - m) * mean of raw teacher rows`` (rows over all ranks).

    Args:
        center: buffer whose numel is K (e.g. (1, K) or (1, 1, K)); float32.
        teacher_logits: (..., K) raw teacher outputs (NOT softmax outputs).
        select: optional bool tensor of shape ``teacher_logits.shape[:-1]``; only True rows count
            (e.g. the non-padding tokens of a caption).

    The mean is sum-over-ranks / count-over-ranks, so ranks with more selected rows weigh more. If no
    row is selected on any rank, the centre is left unchanged (no data is no evidence of a zero mean).
    """
    k = teacher_logits.shape[-1]
    rows = teacher_logits.detach().float().reshape(-1, k)
    if select is None:
        total = rows.sum(dim=0)
        count = torch.full((1,), rows.shape[0], dtype=torch.float32, device=rows.device)
    else:
        if select.shape != teacher_logits.shape[:-1]:
            raise ValueError(f"select has shape {tuple(select.shape)}; expected {tuple(teacher_logits.shape[:-1])}.")
        keep = select.reshape(-1, 1).bool()
        # masked_fill, not multiplication: padded rows may hold inf/nan and 0 * inf = nan
        total = rows.masked_fill(~keep, 0.0).sum(dim=0)
        count = keep.sum().float().reshape(1)
    packed = all_reduce_sum(torch.cat([total, count]))  # one collective for both
    total, count = packed[:-1], packed[-1]
    mean = (total / count.clamp(min=1.0)).view_as(center)
    updated = center * momentum + mean * (1.0 - momentum)
    center.copy_(torch.where(count > 0, updated, center))  # torch.where: no host sync
