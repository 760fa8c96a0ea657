"""The one place a config's ``data`` node becomes a dataset, for training and for evaluation."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.data.transforms import EvalTransform
from hirl_like.registry import DATASETS, TRANSFORMS


def text_context_length(cfg: DictConfig) -> int:
    """The text tower's context length (77, CLIP's, when the pipeline has no text node)."""
    text = cfg.pipeline.get("text")
    return int(text.get("context_length", 77)) if text else 77


def build_train_dataset(cfg: DictConfig, needs_text: bool) -> torch.utils.data.Dataset:
    """``cfg.data`` with the config's training transform (``cfg.transform``); captions are
    tokenised only when the pipeline has a text tower."""
    transform = TRANSFORMS.build(cfg.transform)
    tokenizer = ClipTokenizer(context_length=text_context_length(cfg)) if needs_text else None
    return DATASETS.build(cfg.data, transform=transform, tokenizer=tokenizer, seed=int(cfg.seed))


def build_eval_dataset(cfg: DictConfig, split: str) -> torch.utils.data.Dataset:
    """``cfg.data`` at ``split`` with the deterministic evaluation transform at the ViT's size."""
    data = dict(cfg.data)
    data["split"] = split
    size = int(cfg.pipeline.vision.get("img_size", 224))
    return DATASETS.build(data, transform=EvalTransform(size=size), tokenizer=None)
