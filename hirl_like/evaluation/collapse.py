"""Collapse indicators: pure functions of a batch of embeddings or of a teacher's target distribution,
and a small detector that warns when one of them shows collapse for several checks in a row.

Indicators (all computed without gradient, in float64 on the tensor's device):

* :func:`target_entropy` -- for DINO/iBOT-style teachers, whose targets are a distribution
  ``p_b`` over K prototypes per sample. Two ways to collapse:

  - *uniform collapse*: every ``p_b`` is (close to) uniform, ``H(p_b) ~ ln K``; the per-sample
    entropy ratio ``mean_b H(p_b) / ln K`` goes to 1 (the sharpening lost against the centring);
  - *dominant-dimension collapse*: every sample puts its mass on the same prototype, so the
    batch-mean distribution ``pbar = mean_b p_b`` is one-hot and ``H(pbar) ~ 0`` (the centring
    lost against the sharpening). ``exp(H(pbar))`` is the number of prototypes the batch uses.

* :func:`effective_rank` -- ``exp`` of the entropy of the normalised singular values of the
  (uncentred) embedding matrix (Roy & Vetterli 2007; RankMe, Garrido et al. 2023). 1 when every
  sample has the same embedding direction (complete collapse), ``min(B, D)`` when the singular
  values are all equal.

* :func:`embedding_std` -- SimSiam's indicator (Chen & He 2021, Sec. 4.1): the standard deviation
  over the batch of the L2-normalised embeddings, averaged over dimensions. About ``1/sqrt(D)``
  when the embeddings spread over the sphere, 0 when they are all the same.

The thresholds at which :class:`CollapseDetector` calls an indicator collapsed are module
constants (see :data:`THRESHOLDS`); they flag a complete collapse, not a mere loss of quality.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TextIO

import torch
from torch import Tensor

# ------------------------------------------------------------------------------------------------
# Indicators
# ------------------------------------------------------------------------------------------------


def _entropy(p: Tensor) -> Tensor:
    """``-sum_k p_k ln p_k`` over the last dim, with ``0 ln 0 = 0``. (..., K) -> (...)."""
    return -torch.where(p > 0, p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)), torch.zeros_like(p)).sum(-1)


@torch.no_grad()
def target_entropy_terms(probs: Tensor) -> dict[str, Tensor]:
    """:func:`target_entropy` as 0-dim float32 tensors on ``probs``' device (no host sync): what a
    loss returns as diagnostics, under the names ``target_entropy``, ``target_entropy_ratio`` and
    ``batch_target_entropy`` (nats). probs: (B, K) or (..., K), leading dims flattened into B."""
    p = probs.detach().float().reshape(-1, probs.shape[-1])
    log_k = math.log(p.shape[-1]) if p.shape[-1] > 1 else float("inf")  # K = 1: ratio 0
    entropy = _entropy(p).mean()
    return {"target_entropy": entropy, "target_entropy_ratio": entropy / log_k,
            "batch_target_entropy": _entropy(p.mean(0))}


@torch.no_grad()
def target_entropy(probs: Tensor) -> dict[str, float]:
    """Entropies of a batch of target distributions.

    Args:
        probs: (B, K) rows that are probability distributions (non-negative, each summing to 1),
            e.g. the teacher's centred, sharpened targets ``softmax((t - c) / T_t)``.

    Returns ``{"entropy", "entropy_ratio", "batch_entropy", "batch_entropy_ratio"}``:

        entropy             = (1/B) sum_b H(p_b),          H(p) = -sum_k p_k ln p_k  (nats)
        entropy_ratio       = entropy / ln K               (1: every target uniform)
        batch_entropy       = H(pbar),  pbar = (1/B) sum_b p_b   (0: one prototype for all)
        batch_entropy_ratio = batch_entropy / ln K

    The ratios are 0 for K = 1 (nothing to spread over).
    """
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"probs must be a non-empty (B, K) tensor of distributions, got shape {tuple(probs.shape)}.")
    p = probs.detach().double()
    log_k = math.log(p.shape[1])
    entropy = float(_entropy(p).mean())
    batch_entropy = float(_entropy(p.mean(0)))
    ratio = (lambda h: h / log_k) if log_k > 0 else (lambda h: 0.0)
    return {"entropy": entropy, "entropy_ratio": ratio(entropy), "batch_entropy": batch_entropy,
            "batch_entropy_ratio": ratio(batch_entropy)}


@torch.no_grad()
def effective_rank(z: Tensor, eps: float = 1e-12) -> float:
    """Effective rank of a batch of embeddings (Roy & Vetterli 2007; RankMe, Garrido et al. 2023).

    Args:
        z: (B, D) embeddings (not centred, not normalised: RankMe's definition).
        eps: singular values below ``eps * max singular value`` count as 0 (round-off of a rank-deficient matrix).

    With ``sigma_1 >= ... >= sigma_min(B,D)`` the singular values of ``z``:

        p_k = sigma_k / sum_j sigma_j,      erank(z) = exp(-sum_k p_k ln p_k)

    so ``1 <= erank <= min(B, D)``; it is 1 for a matrix of rank one (every row on one line, e.g. a
    constant backbone) and 0 for an all-zero ``z``. Scale-invariant.
    """
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"z must be a non-empty (B, D) tensor, got shape {tuple(z.shape)}.")
    s = torch.linalg.svdvals(z.detach().double())
    top = float(s.max())
    if not top > 0:
        return 0.0
    s = torch.where(s > eps * top, s, torch.zeros_like(s))
    return float(torch.exp(_entropy(s / s.sum())))


@torch.no_grad()
def embedding_std(z: Tensor) -> float:
    """SimSiam's collapse indicator: per-dimension std over the batch of the L2-normalised embeddings, averaged.

    Args:
        z: (B, D) embeddings, B >= 2.

        u_b = z_b / ||z_b||_2,     std = (1/D) sum_d sqrt( (1/(B-1)) sum_b (u_bd - mean_b u_bd)^2 )

    About ``1/sqrt(D)`` when the ``u_b`` spread over the unit sphere (each coordinate of a uniform
    point on it has variance 1/D), 0 when every sample has the same direction.
    """
    if z.ndim != 2 or z.shape[0] < 2 or z.shape[1] == 0:
        raise ValueError(f"z must be a (B, D) tensor with B >= 2 (a spread needs two samples), got shape {tuple(z.shape)}.")
    u = torch.nn.functional.normalize(z.detach().double(), dim=1)
    return float(u.std(dim=0, unbiased=True).mean())


def embedding_indicators(z: Tensor) -> dict[str, float]:
    """``{"effective_rank", "embedding_std", "embedding_std_ratio", "embedding_dim"}`` of (B, D) embeddings;
    ``embedding_std_ratio = embedding_std * sqrt(D)`` (about 1 when healthy, 0 when collapsed)."""
    std = embedding_std(z)
    return {"effective_rank": effective_rank(z), "embedding_std": std, "embedding_std_ratio": std * math.sqrt(z.shape[1]),
            "embedding_dim": int(z.shape[1])}


# ------------------------------------------------------------------------------------------------
# Detector
# ------------------------------------------------------------------------------------------------

EFFECTIVE_RANK_MIN = 1.5
"""Below it the batch's embeddings span about one direction (a constant backbone gives 1.0)."""
EMBEDDING_STD_RATIO_MIN = 0.1
"""``embedding_std * sqrt(D)`` below it: a tenth of the spread of directions on the sphere (SimSiam's
collapsed runs read ~0, its healthy ones ~1)."""
TARGET_ENTROPY_RATIO_MAX = 0.99
"""Mean per-sample target entropy above 99% of ln K: the teacher's targets are uniform."""
BATCH_ENTROPY_MIN = math.log(1.5)
"""Entropy (nats) of the batch-mean target below ln 1.5: the batch uses fewer than 1.5 prototypes."""


@dataclass(frozen=True)
class Check:
    """One collapse test: the record key it reads (an exact key, or ``*suffix`` for every key ending
    in ``suffix``, e.g. ``dino/target_entropy_ratio``), the test, the words and the advice."""

    key: str
    collapsed: Callable[[float], bool]
    condition: str
    advice: str

    def keys(self, record: Mapping[str, object]) -> list[str]:
        if self.key.startswith("*"):
            return sorted(k for k in record if k.endswith(self.key[1:]))
        return [self.key] if self.key in record else []


_STUDENT_ADVICE = (
    "the student's features collapsed to (nearly) one point: lower optimizer.lr or raise optimizer.warmup_epochs; "
    "for DINO/iBOT-style objectives check teacher_temp and center_momentum; check that the two views differ "
    "(transform) and that the loss has a term against collapse"
)
THRESHOLDS: tuple[Check, ...] = (
    Check("effective_rank", lambda v: v < EFFECTIVE_RANK_MIN, f"< {EFFECTIVE_RANK_MIN:g}", _STUDENT_ADVICE),
    Check("embedding_std_ratio", lambda v: v < EMBEDDING_STD_RATIO_MIN,
          f"< {EMBEDDING_STD_RATIO_MIN:g} (embedding_std * sqrt(D); healthy ~1)", _STUDENT_ADVICE),
    Check("*target_entropy_ratio", lambda v: v > TARGET_ENTROPY_RATIO_MAX, f"> {TARGET_ENTROPY_RATIO_MAX:g} of ln K",
          "uniform collapse: the teacher's targets are uniform. Sharpen them: lower the objective's teacher_temp "
          "(and warmup_teacher_temp), or raise its center_momentum (slower centring)"),
    Check("*batch_target_entropy", lambda v: v < BATCH_ENTROPY_MIN, f"< ln 1.5 = {BATCH_ENTROPY_MIN:.3f} nats",
          "dominant-dimension collapse: every sample's target picks the same prototype. Centre harder: lower the "
          "objective's center_momentum (a faster centre) or raise its teacher_temp"),
)


class CollapseDetector:
    """Counts, per indicator key, how many consecutive checks showed collapse, and writes one
    warning line to ``stream`` when a count reaches ``warn_after`` (``0`` = never warn). The count
    restarts when the indicator looks healthy again, and a key warns again only after that.

    :meth:`update` takes one record (``{"effective_rank": 1.0, "dino/target_entropy_ratio": 0.995, ...}``;
    keys it does not know are ignored) and returns the warnings written (dicts with ``indicator``,
    ``value``, ``condition``, ``checks``, ``advice``, ``message``).
    """

    def __init__(self, warn_after: int, checks: tuple[Check, ...] = THRESHOLDS, stream: TextIO | None = None) -> None:
        if not isinstance(warn_after, int) or isinstance(warn_after, bool) or warn_after < 0:
            raise ValueError(f"collapse_warn_after must be an int >= 0 (0 = never warn), got {warn_after!r}.")
        self.warn_after = warn_after
        self.checks = checks
        self.stream = stream
        self.streak: dict[str, int] = {}
        self.warned: set[str] = set()

    def update(self, record: Mapping[str, object], where: str = "") -> list[dict[str, object]]:
        warnings = []
        for check in self.checks:
            for key in check.keys(record):
                value = record[key]
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    continue
                if not check.collapsed(float(value)):
                    self.streak[key] = 0
                    self.warned.discard(key)
                    continue
                self.streak[key] = self.streak.get(key, 0) + 1
                if self.warn_after and self.streak[key] >= self.warn_after and key not in self.warned:
                    self.warned.add(key)
                    message = (f"warning: collapse{' at ' + where if where else ''}: {key}={float(value):.4g} "
                               f"({check.condition}) for {self.streak[key]} checks in a row; {check.advice}.")
                    print(message, file=self.stream or sys.stderr, flush=True)
                    warnings.append({"indicator": key, "value": float(value), "condition": check.condition,
                                     "checks": self.streak[key], "advice": check.advice, "message": message})
        return warnings
