"""Models: ViT (timm), CLIP text transformer, heads, decoders."""

from hirl_like.models import decoders, heads, pos_embed, text, vit  # noqa: F401
