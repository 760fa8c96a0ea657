"""The one place a config's ``data`` node becomes a dataset, for training and for evaluation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.data.transforms import EvalTransform
from hirl_like.registry import DATASETS, MODELS, TRANSFORMS, RegistryError

DEFAULT_EVAL_SIZE = 224
# The argument that sets a training transform's (global) crop size, in the order they are looked for.
CROP_SIZE_KEYS = ("global_size", "size")


def text_context_length(cfg: DictConfig) -> int:
    """The text tower's context length (77, CLIP's, when the pipeline has no text node)."""
    text = cfg.pipeline.get("text")
    return int(text.get("context_length", 77)) if text else 77


def text_tokenizer(cfg: DictConfig) -> Any:
    """The caption tokenizer: the CLIP BPE at the text tower's context length, or the local Hugging
    Face tokenizer directory a builder text tower names (``pipeline.text.tokenizer``)."""
    text = cfg.pipeline.get("text")
    path = text.get("tokenizer") if text else None
    if path:
        from hirl_like.data.hf_tokenizer import HFTokenizer

        return HFTokenizer(str(path), text_context_length(cfg))
    return ClipTokenizer(context_length=text_context_length(cfg))


def build_train_dataset(cfg: DictConfig, needs_text: bool) -> torch.utils.data.Dataset:
    """``cfg.data`` with the config's training transform (``cfg.transform``); captions are
    tokenised only when the pipeline has a text tower."""
    transform = TRANSFORMS.build(cfg.transform)
    tokenizer = text_tokenizer(cfg) if needs_text else None
    return DATASETS.build(cfg.data, transform=transform, tokenizer=tokenizer, seed=int(cfg.seed))


def _plain(node: Any) -> dict[str, Any] | None:
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    return dict(node) if isinstance(node, Mapping) else None


def _with_defaults(node: dict[str, Any], registry: Any) -> dict[str, Any]:
    """``node`` completed by its constructor's keyword defaults (just ``node`` for an unknown name)."""
    from hirl_like.config.components import constructor_defaults  # local: config imports the data package

    try:
        obj = registry.get(node.get("name"))
    except RegistryError:
        return node
    try:
        return {**constructor_defaults(obj), **node}
    except (TypeError, ValueError):  # a builder without an inspectable signature
        return node


def eval_image_size(cfg: DictConfig | Mapping[str, Any]) -> int:
    """The side of the evaluation images of a run: what its backbone was trained at.

    1. ``pipeline.vision.img_size`` when the vision node sets it, or when its model takes an
       ``img_size`` argument (a ViT: its constructor's default, 224);
    2. else the training transform's crop size: ``transform.global_size`` (MultiCropTransform),
       ``transform.size`` (RandomResizedCropTransform, EvalTransform-like nodes), the
       transform's constructor default when the node leaves it out. A CNN (ResNet) has no
       ``img_size``, so its run is evaluated at the size it was trained at;
    3. else 224.
    """
    pipeline = _plain(cfg.get("pipeline")) or {}
    vision = _plain(pipeline.get("vision"))
    if vision is not None:
        vision = _with_defaults(vision, MODELS)
        if vision.get("img_size") is not None:
            return int(vision["img_size"])
    transform = _plain(cfg.get("transform"))
    if transform is not None:
        transform = _with_defaults(transform, TRANSFORMS)
        for key in CROP_SIZE_KEYS:
            if isinstance(transform.get(key), int) and not isinstance(transform[key], bool):
                return int(transform[key])
    return DEFAULT_EVAL_SIZE


def build_eval_dataset(cfg: DictConfig, split: str) -> torch.utils.data.Dataset:
    """``cfg.data`` at ``split`` with the deterministic evaluation transform at
    :func:`eval_image_size` (the ViT's ``img_size``, else the training crop size)."""
    data = dict(cfg.data)
    data["split"] = split
    return DATASETS.build(data, transform=EvalTransform(size=eval_image_size(cfg)), tokenizer=None)
