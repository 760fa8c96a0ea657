"""The text side of a CLIP-style run, for zero-shot classification and retrieval.

Reads ``main_text_checkpoint.pth`` (what training exports for methods with a text tower)::

    {"text": TextTransformer state dict (text_projection included),
     "image_projection": (E, W) weight of the bias-free image projection (W = ViT width),
     "text_config": MODELS node of the text model, "embed_dim": E, "logit_scale": float,
     "tokenizer": {"name": "clip_bpe", "context_length": L}}

or the text tower inside a full training ``checkpoint.pth`` (``{"model": pipeline state, "config"}``;
the EMA text teacher and its image projection when the run has one, else the student's, as
training's export picks them). The text model is rebuilt from its config through
``hirl_like.registry.MODELS`` and loaded strictly.

Embeddings, as in training (``pipelines/step_cache.py``)::

    image: normalize(P_img @ cls)              cls = the ViT's CLS feature (B, W)
    text:  text_model(tokens) = P_txt @ x_eot  (B, E), normalised by the metric code
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable without installing hirl_like, like common.py
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import hirl_like.models.text  # noqa: E402,F401  (registers text_transformer)
from hirl_like.data.tokenizer import ClipTokenizer  # noqa: E402
from hirl_like.engine.checkpoint import TEXT_EXPORT_NAME  # noqa: E402
from hirl_like.evaluation.checkpoint_loading import load_backbone_strict, load_checkpoint_file  # noqa: E402
from hirl_like.registry import MODELS  # noqa: E402

# Pipeline state-dict prefixes of a full checkpoint: (text model, image projection), teacher first.
PIPELINE_TEXT_PREFIXES = (
    ("backbones.teacher_text.", "backbones.teacher_image_projection."),
    ("backbones.student_text.", "backbones.image_projection."),
)
TOKENIZERS = ("clip_bpe",)


class TextTower(nn.Module):
    """Text encoder + image projection of one run.

    Args:
        text: the text model, (B, L) token ids -> (B, E) embeddings.
        image_projection: bias-free Linear W -> E applied to the ViT's CLS feature.
        tokenizer: list of strings -> (B, L) token ids.
        logit_scale: the trained CLIP temperature exp(t), when known (reported, not used by metrics).
    """

    def __init__(
        self, text: nn.Module, image_projection: nn.Linear, tokenizer: ClipTokenizer, logit_scale: float | None = None
    ) -> None:
        super().__init__()
        self.text = text.eval()
        self.image_projection = image_projection.eval()
        self.tokenizer = tokenizer
        self.logit_scale = logit_scale

    @property
    def embed_dim(self) -> int:
        return int(self.image_projection.out_features)

    @property
    def device(self) -> torch.device:
        return self.image_projection.weight.device

    @torch.no_grad()
    def encode_text(self, tokens: Tensor) -> Tensor:
        """(N, L) token ids (any device) -> (N, E) text embeddings, not normalised."""
        return self.text(tokens.to(self.device)).float()

    @torch.no_grad()
    def encode_image(self, cls: Tensor) -> Tensor:
        """(N, W) CLS features -> (N, E) unit-norm image embeddings."""
        return F.normalize(self.image_projection(cls.to(self.device)).float(), dim=-1)


def add_text_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--text_pretrained",
        default=None,
        help=f"text tower: {TEXT_EXPORT_NAME} or a full checkpoint.pth (default: {TEXT_EXPORT_NAME} beside --pretrained)",
    )
    parser.add_argument("--text_batch_size", type=int, default=256, help="captions per text-encoder call")


def default_text_checkpoint(pretrained: str | Path) -> Path:
    return Path(pretrained).resolve().parent / TEXT_EXPORT_NAME


def _build_tokenizer(spec: Any, text_config: Mapping[str, Any]) -> ClipTokenizer:
    if spec is None:
        return ClipTokenizer(int(text_config.get("context_length", 77)))
    if not isinstance(spec, Mapping) or spec.get("name") not in TOKENIZERS:
        raise ValueError(f"text checkpoint names tokenizer {spec!r}; supported: {', '.join(TOKENIZERS)}.")
    return ClipTokenizer(int(spec.get("context_length", text_config.get("context_length", 77))))


def _from_export(payload: Mapping[str, Any], path: str) -> tuple[dict, Tensor, dict, float | None, Any]:
    missing = [k for k in ("text", "image_projection", "text_config") if k not in payload]
    if missing:
        raise ValueError(
            f"{path} is not a text checkpoint: it lacks {missing} (it has {sorted(map(str, payload))}). Pass the "
            f"{TEXT_EXPORT_NAME} or the full checkpoint.pth of a run with a text tower."
        )
    return (
        dict(payload["text"]),
        payload["image_projection"],
        dict(payload["text_config"]),
        payload.get("logit_scale"),
        payload.get("tokenizer"),
    )


def _from_full_checkpoint(payload: Mapping[str, Any], path: str) -> tuple[dict, Tensor, dict, float | None, Any]:
    state, cfg = payload["model"], payload["config"]
    for text_prefix, proj_prefix in PIPELINE_TEXT_PREFIXES:
        text = {k[len(text_prefix):]: v for k, v in state.items() if k.startswith(text_prefix)}
        if text:
            break
    else:
        raise ValueError(
            f"{path} is a training checkpoint without a text tower (no 'backbones.*_text.' keys): its method trains "
            "no text encoder, so zero-shot and retrieval cannot run on it."
        )
    proj_key = proj_prefix + "weight"
    if proj_key not in state:
        raise ValueError(f"{path} has a text tower but no image projection ({proj_key!r}).")
    text_config = dict(((cfg.get("pipeline") or {}).get("text")) or {})
    if "name" not in text_config:
        raise ValueError(f"{path}: its config has no pipeline.text node to rebuild the text model from.")
    scale = state.get("objectives.clip.logit_scale")
    logit_scale = float(scale.exp()) if isinstance(scale, Tensor) else None
    return text, state[proj_key], text_config, logit_scale, None


def load_text_tower(path: str | Path, vision_width: int | None = None) -> TextTower:
    """The text tower stored at ``path`` (export or full checkpoint), strictly loaded, in eval mode.

    ``vision_width``, when given, must equal the image projection's input size (the ViT width).
    Raises FileNotFoundError for a missing file and ValueError for one that does not fit.
    """
    path = str(path)
    payload = load_checkpoint_file(path)
    if isinstance(payload.get("model"), Mapping) and isinstance(payload.get("config"), Mapping):
        text_state, proj, text_config, logit_scale, tok_spec = _from_full_checkpoint(payload, path)
    else:
        text_state, proj, text_config, logit_scale, tok_spec = _from_export(payload, path)
    if not isinstance(proj, Tensor) or proj.ndim != 2:
        raise ValueError(f"{path}: image_projection must be an (E, W) weight tensor, got {type(proj).__name__}.")
    embed_dim, width = proj.shape
    if vision_width is not None and width != vision_width:
        raise ValueError(
            f"{path}: the image projection takes {width}-d features but the backbone is {vision_width}-d wide: "
            "the text checkpoint comes from another run than --pretrained (pass the matching --text_pretrained)."
        )
    text_config.pop("embed_dim", None)  # the projection's shape is the authority
    text = MODELS.build(text_config, embed_dim=int(embed_dim))
    load_backbone_strict(text, text_state)
    projection = nn.Linear(int(width), int(embed_dim), bias=False)
    projection.weight.data.copy_(proj.float())
    return TextTower(text, projection, _build_tokenizer(tok_spec, text_config), logit_scale)


def text_tower_from_args(args: argparse.Namespace, vision_width: int | None = None) -> tuple[TextTower, str]:
    """The tower of ``--text_pretrained`` (default: the export beside ``--pretrained``) and its path."""
    if args.text_pretrained:
        path = Path(args.text_pretrained)
        if not path.exists():
            raise FileNotFoundError(f"text checkpoint not found: {path} (check --text_pretrained).")
    else:
        path = default_text_checkpoint(args.pretrained)
        if not path.exists():
            raise FileNotFoundError(
                f"no text checkpoint at {path}: the run of {args.pretrained} has no text tower (its method trains no "
                "text encoder, e.g. iBOT, MAE, DINO), and zero-shot and retrieval need one. Pass --text_pretrained "
                f"with the {TEXT_EXPORT_NAME} (or checkpoint.pth) of a run with text (CLIP, Harmony, ...)."
            )
    return load_text_tower(path, vision_width), str(path)
