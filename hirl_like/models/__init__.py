"""Models: ViT (timm), CLIP text transformer, heads, decoders, builder towers (open_clip, timm, torchvision, HF)."""

from hirl_like.models import builders, decoders, heads, pos_embed, resnet, text, vit  # noqa: F401
