"""Pipelines: students, EMA teachers and registered objectives; forward(batch) -> dict of losses."""

from hirl_like.pipelines import composed, hirl, objectives  # noqa: F401
