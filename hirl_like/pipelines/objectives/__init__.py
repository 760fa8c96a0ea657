"""Registered objectives (OBJECTIVES). Import each module so that it registers."""

from hirl_like.pipelines.objectives import clip  # noqa: F401
