"""The image-text distillers of ITRA (ChenDelong1999/ITRA, ``src/distiller``), one file each, each a
plain nn.Module registered in LOSSES. ITRA's InfoNCE is :class:`hirl_like.losses.clip.ClipLoss`.
See docs/deviations.md for where these follow the papers rather than the reference code."""

from hirl_like.losses.distillers import barlow_twins, compress, dino_vl, protoclip, protocpc, rkd, seed, simreg, vicreg  # noqa: F401
