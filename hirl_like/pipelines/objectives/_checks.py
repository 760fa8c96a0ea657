"""Argument checks shared by the objectives' constructors (ValueError naming ``objective.argument``)."""

from __future__ import annotations

from collections.abc import Sequence


def check_dims(owner: str, **dims: object) -> None:
    """ValueError unless every value is a positive int."""
    for name, value in dims.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}.")


def check_hidden_dims(owner: str, name: str, dims: Sequence[int]) -> tuple[int, ...]:
    """A list of positive layer widths (may be empty) -> tuple."""
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
        raise ValueError(f"{owner}.{name} must be a list of layer widths, got {dims!r}.")
    check_dims(owner, **{f"{name}[{i}]": d for i, d in enumerate(dims)})
    return tuple(int(d) for d in dims)


def check_positive(owner: str, name: str, value: float) -> None:
    """ValueError unless ``value`` is a number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{owner}.{name} must be > 0, got {value!r}.")
