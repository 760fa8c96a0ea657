"""Models: ViT (timm), CLIP text transformer, heads, decoders."""

from hirl_like.models import decoders, heads, pos_embed, resnet, text, vit  # noqa: F401
