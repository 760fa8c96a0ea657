"""Registered objectives (OBJECTIVES). Import each module so that it registers."""

from hirl_like.pipelines.objectives import clip, ibot, mae, mlm, text_distill  # noqa: F401
from hirl_like.pipelines.objectives import dino, masked_distill, simclr  # noqa: F401
from hirl_like.pipelines.objectives import mocov2, mocov3, simsiam, swav  # noqa: F401
from hirl_like.pipelines.objectives import byol, harl  # noqa: F401
from hirl_like.pipelines.objectives import semantic  # noqa: F401
from hirl_like.pipelines.objectives import vl_barlowtwins, vl_compress, vl_infonce, vl_protoclip, vl_prototype_distill, vl_rkd, vl_seed, vl_simreg, vl_vicreg  # noqa: F401
