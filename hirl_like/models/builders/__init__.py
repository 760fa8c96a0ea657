"""Towers picked by name from model builders (ITRA's ``--image-model-builder`` /
``--text-model-builder``): ``pipeline.vision.name: open_clip | timm | torchvision`` and
``pipeline.text.name: open_clip | huggingface``, each with ``pretrained`` (a local file, never a
download), ``lock`` (LiT), ``adapter: lora`` and a projection ``head``. One builder per file."""

from hirl_like.models.builders import (  # noqa: F401  (registers the towers)
    huggingface_text,
    open_clip_text,
    open_clip_tower,
    open_clip_vision,
    timm_tower,
    torchvision_tower,
)
