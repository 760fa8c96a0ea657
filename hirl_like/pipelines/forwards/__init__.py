"""Shared forwards of the students and EMA teachers, registered into ``SHARED_FORWARDS`` on import."""

from hirl_like.pipelines.forwards import text, vision  # noqa: F401
from hirl_like.pipelines.forwards import features  # noqa: F401
from hirl_like.pipelines.forwards import feature_maps  # noqa: F401
