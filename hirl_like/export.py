"""The one place a run's exported files are written and read.

Files in a run's ``output_dir``:

``main_vit_checkpoint.pth``
    The exported ViT (the EMA teacher when the method has one, else the student; the student
    for MoCo v2/v3, which evaluate their query encoder: ``Backbones.prefer_student_export``) as
    a plain timm state dict: it loads with ``strict=True`` into ``timm.create_model(
    'vit_small_patch16_224', num_classes=0, img_size=..., patch_size=...)`` (no mask token, no
    prefix). A ResNet backbone writes its ``ResNet.export_state_dict`` (timm/torchvision keys).
``main_text_checkpoint.pth`` (methods with a text tower)::

    {"text": TextTransformer state dict (text_projection included),
     "image_projection": (E, W) weight of the bias-free image projection (W = ViT width),
       or None with "image_head": {head, in_features, out_features, state} for a builder tower's
       mlp / dino head (hirl_like.models.builders.projection.projection_export),
     "text_config": MODELS node of the text model, "embed_dim": E, "logit_scale": float,
     "tokenizer": {"name": "clip_bpe", "context_length": L}}

``checkpoint.pth``
    Written by the engine (``{"model": pipeline state dict, "config": resolved config, ...}``).
    It is read here by rebuilding the pipeline from the config it stores, loading its state
    strictly and exporting from that pipeline exactly as :func:`write_exports` does, so a full
    checkpoint and its exports give the same backbone and text tower, without any parsing of the
    pipeline's private key names.

The trainer calls :func:`write_exports`; the evaluation commands call
:func:`load_vision_backbone` and :func:`load_text_tower`. Besides the pipelines, models and
registries, this module imports only leaf modules that import nothing of the engine or of the
evaluation commands (``engine.checkpoint``, ``evaluation.checkpoint_files``,
``evaluation.checkpoint_loading``, ``evaluation.text_tower``), so both sides import it without
a cycle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import hirl_like.pipelines  # noqa: F401  (registers every pipeline, objective and model)
from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.engine.checkpoint import CHECKPOINT_NAME, TEXT_EXPORT_NAME, VISION_EXPORT_NAME, save_atomic
from hirl_like.evaluation.checkpoint_files import load_checkpoint_file
from hirl_like.evaluation.checkpoint_loading import extract_state_dict, load_backbone_strict
from hirl_like.evaluation.text_tower import TextTower
from hirl_like.models.builders.pretrained import skip_pretrained
from hirl_like.models.builders.projection import projection_from_export
from hirl_like.registry import MODELS, PIPELINES, RegistryError

__all__ = [
    "CHECKPOINT_NAME", "TEXT_EXPORT_NAME", "TOWERS", "VISION_EXPORT_NAME", "build_vision_backbone", "export_target",
    "default_text_checkpoint", "export_files", "load_text_tower", "load_vision_backbone", "pipeline_from_checkpoint",
    "student_pipeline", "text_export", "text_tower_from_export", "vision_export", "write_exports",
]

TOKENIZERS = ("clip_bpe", "huggingface")
DEFAULT_CONTEXT_LENGTH = 77  # TextTransformer's default, CLIP's context
TEXT_EXPORT_KEYS = ("text", "image_projection", "text_config")  # what a reader cannot do without


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def vision_export(pipeline: nn.Module) -> dict[str, Tensor]:
    """The content of ``main_vit_checkpoint.pth``: the exported ViT's timm state dict."""
    return pipeline.export_vision().export_state_dict()


def text_export(pipeline: nn.Module) -> dict[str, Any] | None:
    """The content of ``main_text_checkpoint.pth``, or None for a pipeline without a text tower."""
    parts = pipeline.export_text()
    if parts is None:
        return None
    missing = [k for k in TEXT_EXPORT_KEYS if k not in parts]
    if missing:
        raise ValueError(f"{type(pipeline).__name__}.export_text() lacks {missing}; it gave {sorted(parts)}.")
    payload = dict(parts)
    text_config = dict(payload["text_config"])
    context = int(text_config.get("context_length", DEFAULT_CONTEXT_LENGTH))
    payload["tokenizer"] = {"name": "clip_bpe", "context_length": context}
    if text_config.get("tokenizer"):  # a builder text tower's local Hugging Face tokenizer directory
        payload["tokenizer"] = {"name": "huggingface", "path": str(text_config["tokenizer"]), "context_length": context}
    return payload


def write_exports(pipeline: nn.Module, output_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``main_vit_checkpoint.pth`` and, when the pipeline has a text tower,
    ``main_text_checkpoint.pth`` into ``output_dir``, each atomically (temp file + rename).

    Returns {"vision": path, "text": path} (no "text" key without a text tower).
    """
    paths = {}
    for kind, (payload, path) in export_files(pipeline, output_dir).items():
        save_atomic(payload, path)
        paths[kind] = path
    return paths


def export_files(pipeline: nn.Module, output_dir: str | os.PathLike[str]) -> dict[str, tuple[Any, Path]]:
    """What :func:`write_exports` writes, in its order: {"vision": (payload, path)[, "text": ...]}.

    The payloads hold the pipeline's own tensors (no copies): the trainer's background writer
    snapshots them to CPU before training goes on (``engine.checkpoint.CheckpointWriter``).
    """
    folder = Path(output_dir)
    files = {"vision": (vision_export(pipeline), folder / VISION_EXPORT_NAME)}
    text = text_export(pipeline)
    if text is not None:
        files["text"] = (text, folder / TEXT_EXPORT_NAME)
    return files


def stale_exports(pipeline: nn.Module, output_dir: str | os.PathLike[str]) -> list[str]:
    """Names of the exports ``write_exports`` would write that are missing from ``output_dir`` or
    older than its ``checkpoint.pth`` (a run killed between its checkpoint and its exports by code
    that wrote them in the other order, or exports deleted by hand)."""
    folder = Path(output_dir)
    checkpoint = folder / CHECKPOINT_NAME
    wanted = [VISION_EXPORT_NAME] + ([TEXT_EXPORT_NAME] if pipeline.export_text() is not None else [])
    if not checkpoint.is_file():
        return wanted
    written = checkpoint.stat().st_mtime_ns
    return [name for name in wanted if not (folder / name).is_file() or (folder / name).stat().st_mtime_ns < written]


# ----------------------------------------------------------------------------------------------
# Reading a full training checkpoint
# ----------------------------------------------------------------------------------------------


def is_training_checkpoint(payload: Mapping[str, Any]) -> bool:
    """True for the engine's ``checkpoint.pth`` layout: a pipeline state under "model" and its "config"."""
    return isinstance(payload.get("model"), Mapping) and isinstance(payload.get("config"), Mapping)


def pipeline_from_checkpoint(payload: Mapping[str, Any], path: str | os.PathLike[str] = "checkpoint") -> nn.Module:
    """The pipeline of a loaded ``checkpoint.pth``, rebuilt from its stored config, strictly loaded, in eval mode.

    The global RNG is left untouched (building draws random initial weights, then overwritten).
    Raises ValueError when the stored config cannot be built or the state does not fit it.
    """
    node = (payload.get("config") or {}).get("pipeline")
    if not isinstance(node, Mapping):
        raise ValueError(f"{path}: its config has no pipeline node to rebuild the model from.")
    with torch.random.fork_rng(devices=[]), skip_pretrained():  # the stored state replaces every weight
        try:
            pipeline = PIPELINES.build(node)
        except (RegistryError, TypeError, ValueError) as err:
            raise ValueError(
                f"{path}: cannot rebuild its pipeline from the config it stores ({err}). Read its weights by key "
                "instead, e.g. --model_prefix model --backbone_prefix backbones.student_vision."
            ) from err
    try:
        load_backbone_strict(pipeline, payload["model"])
    except ValueError as err:
        raise ValueError(f"{path}: the stored pipeline state does not fit the stored config: {err}") from err
    return pipeline.eval()


def _module_name(root: nn.Module, module: nn.Module) -> str:
    return next((name for name, m in root.named_modules() if m is module), type(module).__name__)


TOWERS = ("exported", "student")
"""Which towers an evaluation reads: the exported ones (the EMA teachers when the method has them,
as the papers evaluate, except MoCo v2/v3 whose exports are the students already) or the
students, read from the run's full ``checkpoint.pth``."""


def student_pipeline(path: str | os.PathLike[str]) -> tuple[nn.Module, Path]:
    """The pipeline of the run that wrote ``path`` with its EMA teachers dropped, so that its
    exports are the students; and the checkpoint read.

    ``path`` is the run's ``checkpoint.pth`` or any file beside it (e.g. ``main_vit_checkpoint.pth``).
    At short budgets an EMA teacher trails its student (a momentum going to 1 freezes it before
    the run ends), and this reads the students to tell that lag from what the objectives learnt.
    """
    path = Path(path)
    checkpoint = path if path.name == CHECKPOINT_NAME else path.resolve().parent / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"--towers student reads the students from the run's {CHECKPOINT_NAME}, and there is none at {checkpoint}."
        )
    payload = load_checkpoint_file(checkpoint)
    if not is_training_checkpoint(payload):
        raise ValueError(f"{checkpoint} is not a training checkpoint (no pipeline state and config): --towers student needs one.")
    pipeline = pipeline_from_checkpoint(payload, checkpoint)
    pipeline.backbones.drop_teachers()
    return pipeline, checkpoint


def _check_towers(towers: str) -> None:
    if towers not in TOWERS:
        raise ValueError(f"towers={towers!r}: choose one of {', '.join(TOWERS)}.")


# ----------------------------------------------------------------------------------------------
# Reading the vision backbone
# ----------------------------------------------------------------------------------------------


def build_vision_backbone(vision_config: Mapping[str, Any]) -> nn.Module:
    """A randomly initialised backbone of ``vision_config`` (a MODELS node), without drop path, in eval mode.

    A builder tower's ``pretrained`` file is not read (:func:`skip_pretrained`): the weights are
    random, as the name says, and whatever is loaded next replaces them."""
    with skip_pretrained():
        return MODELS.build({**dict(vision_config), "drop_path_rate": 0.0}).eval()


def export_target(model: nn.Module) -> nn.Module:
    """The module whose ``state_dict()`` has the keys of ``model.export_state_dict()`` (what
    ``main_vit_checkpoint.pth`` holds): the model itself for a ViT (its export is its state dict
    less the mask token), the wrapped network for a :class:`~hirl_like.models.resnet.ResNet`
    (its timm network ``model``, whose keys the export keeps without the ``model.`` prefix)."""
    if not hasattr(model, "export_state_dict"):
        return model
    own = set(model.state_dict())
    exported = set(model.export_state_dict())
    if exported <= own:
        return model
    for child in model.children():
        if set(child.state_dict()) == exported:
            return child
    return model


def _stem_hint(model: nn.Module, state: Mapping[str, Any]) -> str | None:
    """What to pass when a ResNet checkpoint's stem (``conv1``) is the other one of the two stems."""
    if not hasattr(model, "small_image_stem"):
        return None
    weight = state.get("conv1.weight")
    if not isinstance(weight, Tensor) or weight.ndim != 4 or weight.shape[-1] not in (3, 7):
        return None
    small = int(weight.shape[-1]) == 3
    if small == bool(model.small_image_stem):
        return None
    kind = "the 3x3 small-image (CIFAR) stem" if small else "the standard 7x7 stem"
    return (f"the checkpoint's conv1 is {tuple(weight.shape)}, {kind}: pass "
            f"pipeline.vision.small_image_stem={'true' if small else 'false'}.")


def load_vision_backbone(
    path: str | os.PathLike[str],
    vision_config: Mapping[str, Any] | None = None,
    model_prefix: str | None = None,
    backbone_prefix: str | None = None,
    towers: str = "exported",
) -> tuple[nn.Module, str]:
    """A pre-trained vision backbone (ViT or ResNet), strictly loaded, in eval mode, and a note of what was read.

    ``path`` is a ``main_vit_checkpoint.pth``, a full ``checkpoint.pth`` (its exported backbone,
    as :func:`write_exports` picks it), or any timm / DINO / iBOT / DeiT state dict; for the
    latter the architecture is ``vision_config`` and the weights are found automatically, or
    under ``model_prefix`` / ``backbone_prefix`` when given (which also read a full checkpoint
    by key, e.g. its student: ``model`` / ``backbones.student_vision.``). A ResNet reads the keys of
    its export (timm's = torchvision's backbone keys, :func:`export_target`), e.g. MoCo's
    ``{"state_dict": {"module.encoder_q.conv1.weight": ...}}`` with ``backbone_prefix="module.encoder_q."``
    (its ``fc`` head is dropped).

    ``towers="student"`` reads the student ViT of the run's ``checkpoint.pth`` instead
    (:func:`student_pipeline`).

    Reading leaves the global RNG untouched. Raises FileNotFoundError for a missing file and
    ValueError for one that does not fit.
    """
    _check_towers(towers)
    if towers == "student":
        if model_prefix is not None or backbone_prefix is not None:
            raise ValueError("--towers student reads the run's checkpoint.pth by its config: drop --model_prefix / --backbone_prefix.")
        pipeline, checkpoint = student_pipeline(path)
        vit = pipeline.export_vision()
        return vit.eval(), f"{checkpoint} [model:{_module_name(pipeline, vit)}.]"
    payload = load_checkpoint_file(path)
    if model_prefix is None and backbone_prefix is None and is_training_checkpoint(payload):
        pipeline = pipeline_from_checkpoint(payload, path)
        vit = pipeline.export_vision()
        return vit.eval(), f"{path} [model:{_module_name(pipeline, vit)}.]"
    if vision_config is None:
        raise ValueError(f"{path} is a state dict without its architecture: pass the training config's pipeline.vision.")
    with torch.random.fork_rng(devices=[]):  # initial weights, overwritten below
        model = build_vision_backbone(vision_config)
    target = export_target(model)
    own = target.state_dict()
    optional = {"mask_token"} & set(own)  # iBOT's mask token: exported checkpoints leave it out
    state = extract_state_dict(
        payload, model_prefix=model_prefix, backbone_prefix=backbone_prefix, expected_keys=set(own) - optional
    )
    for key in optional - set(state):
        state[key] = own[key]
    try:
        load_backbone_strict(target, state)
    except ValueError as err:
        hint = _stem_hint(model, state)
        raise ValueError(f"{err}\n  hint: {hint}" if hint else str(err)) from None
    flags = f" [{model_prefix or ''}:{backbone_prefix or ''}]" if model_prefix or backbone_prefix else ""
    return model, f"{path}{flags}"


# ----------------------------------------------------------------------------------------------
# Reading the text tower
# ----------------------------------------------------------------------------------------------


def default_text_checkpoint(pretrained: str | os.PathLike[str]) -> Path:
    """Where training put the text export of the run that wrote ``pretrained``."""
    return Path(pretrained).resolve().parent / TEXT_EXPORT_NAME


def _tokenizer(spec: Any, context_length: int) -> Any:
    if spec is None:
        return ClipTokenizer(context_length)
    if not isinstance(spec, Mapping) or spec.get("name") not in TOKENIZERS:
        raise ValueError(f"the text checkpoint names tokenizer {spec!r}; supported: {', '.join(TOKENIZERS)}.")
    if spec["name"] == "huggingface":
        from hirl_like.data.hf_tokenizer import HFTokenizer

        return HFTokenizer(str(spec["path"]), int(spec.get("context_length", context_length)))
    return ClipTokenizer(int(spec.get("context_length", context_length)))


def text_tower_from_export(
    payload: Mapping[str, Any], path: str | os.PathLike[str] = "text export", vision_width: int | None = None
) -> TextTower:
    """The :class:`TextTower` of a ``main_text_checkpoint.pth`` payload, strictly loaded, in eval mode.

    ``vision_width``, when given, must equal the image projection's input size W (the ViT width).
    """
    missing = [k for k in TEXT_EXPORT_KEYS if k not in payload]
    if missing:
        raise ValueError(
            f"{path} is not a text checkpoint: it lacks {missing} (it has {sorted(map(str, payload))}). Pass the "
            f"{TEXT_EXPORT_NAME} or the full {CHECKPOINT_NAME} of a run with a text tower."
        )
    proj, head = payload["image_projection"], payload.get("image_head")
    if head is not None:  # a non-linear head of a builder tower (mlp, dino)
        embed_dim, width = int(head["out_features"]), int(head["in_features"])
    elif not isinstance(proj, Tensor) or proj.ndim != 2:
        raise ValueError(f"{path}: image_projection must be an (E, W) weight tensor, got {type(proj).__name__}.")
    else:
        embed_dim, width = (int(s) for s in proj.shape)
    if vision_width is not None and width != vision_width:
        raise ValueError(
            f"{path}: the image projection takes {width}-d features but the backbone is {vision_width}-d wide: "
            "the text checkpoint comes from another run than --pretrained (pass the matching --text_pretrained)."
        )
    text_config = dict(payload["text_config"])
    if "name" not in text_config:
        raise ValueError(f"{path}: text_config has no 'name' to rebuild the text model from: {text_config}.")
    text_config.pop("embed_dim", None)  # the projection's shape is the authority
    with torch.random.fork_rng(devices=[]), skip_pretrained():  # initial weights, overwritten below
        text = MODELS.build(text_config, embed_dim=embed_dim)
        projection = projection_from_export(head) if head is not None else nn.Linear(width, embed_dim, bias=False)
    load_backbone_strict(text, payload["text"])
    if head is None:
        with torch.no_grad():
            projection.weight.copy_(proj.float())
    tokenizer = _tokenizer(payload.get("tokenizer"), int(text_config.get("context_length", DEFAULT_CONTEXT_LENGTH)))
    scale = payload.get("logit_scale")
    return TextTower(text, projection, tokenizer, float(scale) if scale is not None else None)


def load_text_tower(path: str | os.PathLike[str], vision_width: int | None = None, towers: str = "exported") -> TextTower:
    """The text tower stored at ``path`` (``main_text_checkpoint.pth`` or a full ``checkpoint.pth``);
    with ``towers="student"`` the student text tower of the run's ``checkpoint.pth``.

    Raises FileNotFoundError for a missing file and ValueError for one that does not fit
    (another architecture, another run's width, a run without a text tower).
    """
    _check_towers(towers)
    if towers == "student":
        pipeline, path = student_pipeline(path)
        payload = text_export(pipeline)
    else:
        payload = load_checkpoint_file(path)
        if is_training_checkpoint(payload):
            payload = text_export(pipeline_from_checkpoint(payload, path))
    if payload is None:
        raise ValueError(
            f"{path} is a training checkpoint without a text tower: its method trains no text encoder, so "
            "zero-shot and retrieval cannot run on it."
        )
    return text_tower_from_export(payload, path, vision_width)
