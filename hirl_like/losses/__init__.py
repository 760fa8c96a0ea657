"""Losses: one file per objective, each a plain nn.Module registered in LOSSES."""

from hirl_like.losses import byol, harl  # noqa: F401
from hirl_like.losses import clip, dino, ibot, mae, mlm, moco, semantic_path, siglip, simclr, simsiam, swav, text_distill  # noqa: F401
from hirl_like.losses import distillers  # noqa: F401
