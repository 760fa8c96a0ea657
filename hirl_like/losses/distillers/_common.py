"""Argument and shape checks shared by the image-text distiller losses (ITRA's ``src/distiller``).

Every distiller loss takes a *student* and a *teacher* embedding of the same B image-text pairs,
(B, D) each (ITRA: image = student, text = teacher). Losses run in float32 with autocast off.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import Tensor


def check_pair(student: Tensor, teacher: Tensor, owner: str, min_batch: int = 1) -> None:
    """ValueError unless both are (B, D) with the same shape and B >= ``min_batch``."""
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(
            f"{owner}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must both be (B, D)."
        )
    if student.shape[0] < min_batch:
        raise ValueError(f"{owner} needs a batch of at least {min_batch} pairs, got {student.shape[0]}.")


def check_positive(owner: str, name: str, value: float) -> None:
    """ValueError naming ``owner.name`` unless ``value`` is a number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{owner}: {name} must be > 0, got {value!r}.")


def check_non_negative(owner: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{owner}: {name} must be >= 0, got {value!r}.")


def check_momentum(owner: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}: {name} must lie in [0, 1] (EMA momentum), got {value!r}.")


def float32(x: Tensor) -> AbstractContextManager:
    """``torch.autocast(..., enabled=False)`` on ``x``'s device: the distances and softmaxes of
    the distillers are computed in float32 whatever the step's precision."""
    return torch.autocast(device_type=x.device.type, enabled=False)
