"""What each config value may be: one table of rules, checked by :mod:`hirl_like.config.validation`.

``KEYS`` holds the rules of plain keys by dotted path; ``ARGUMENTS`` the rules of component
arguments by argument name, in any component node (``depth`` of ``pipeline.vision`` and of any
other ViT node), or by ``component.argument`` where one component reads a name its own way (the
component is its registered name, or the objective's name for ``pipeline.<objective>`` nodes).
``RELATIONS`` tie arguments of one node together (``img_size`` a multiple of ``patch_size``),
``WARMUPS`` are the schedule lengths (epochs, or shares of the run) compared with ``epochs``. Null values are the type
check's business (:mod:`hirl_like.config.typing_check`) and are not looked at here. The ranges are
what the code does with each key (engine/, pipelines/, data/): a value outside one crashes a run
or trains it wrongly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hirl_like.config.components import objective_names
from hirl_like.registry import MODELS
from hirl_like.schedules import check_span


@dataclass(frozen=True)
class Rule:
    """A constraint on one (non-null) value: ``test`` says whether the value meets it, ``allowed``
    says in words what does (it ends the refusal: ``KEY=VALUE: must be ALLOWED``)."""

    test: Callable[[Any], bool]
    allowed: str

    def accepts(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError, OverflowError):  # a value of another type: not allowed either
            return False


def _is_number(value: Any, integer: bool = False) -> bool:
    """An int (or, unless ``integer``, a finite float); a bool is not a number in a config."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (not integer and isinstance(value, float) and math.isfinite(value))


def number(lo: float | None = None, hi: float | None = None, *, integer: bool = False,
           lo_open: bool = False, hi_open: bool = False) -> Rule:
    """A number (an int with ``integer``) in a closed, open or half-open range."""
    def test(v: Any) -> bool:
        return (_is_number(v, integer) and (lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))
    def text(bound: float) -> str:  # seed's 2**63 - 1 reads better as a power of two
        return f"2^{round(math.log2(bound + 1))} - 1" if integer and bound >= 2**31 else f"{bound:g}"
    what = "an int" if integer else "a number"
    if lo is not None and hi is not None:
        words = f"{what} in {'(' if lo_open else '['}{text(lo)}, {text(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        words = f"{what} {'>' if lo_open else '>='} {text(lo)}"
    else:
        words = f"a finite {what.split()[-1]}"
    return Rule(test, words)


def one_of(*options: str, casefold: bool = False) -> Rule:
    """One of the strings ``options`` (in any case with ``casefold``)."""
    fold = (lambda v: v.lower()) if casefold else (lambda v: v)
    return Rule(lambda v: isinstance(v, str) and fold(v) in options, f"one of {', '.join(options)}")


def pair(element: Rule, *, ordered: bool = True) -> Rule:
    """Two values [a, b] that each meet ``element`` (and a <= b when ``ordered``)."""
    def test(v: Any) -> bool:
        return isinstance(v, list) and len(v) == 2 and all(map(element.accepts, v)) and (not ordered or v[0] <= v[1])
    return Rule(test, f"2 values [a, b], each {element.allowed}{', with a <= b' if ordered else ''}")


def items(element: Rule, length: int | None = None, *, nonempty: bool = True) -> Rule:
    """A list whose values each meet ``element`` (of ``length`` values, or non-empty)."""
    def test(v: Any) -> bool:
        return (isinstance(v, list) and all(map(element.accepts, v))
                and (len(v) == length if length is not None else bool(v) or not nonempty))
    count = f"{length} values" if length is not None else "a non-empty list" if nonempty else "a list"
    return Rule(test, f"{count}, each {element.allowed}")


def either(*rules: Rule) -> Rule:
    """A value that meets any of ``rules``."""
    return Rule(lambda v: any(rule.accepts(v) for rule in rules), " or ".join(rule.allowed for rule in rules))


def _objectives(spec: Any) -> bool:
    """A pipeline's ``objectives``: known names, weights >= 0 and not all 0."""
    weights = spec.values() if isinstance(spec, Mapping) else [1.0]
    return objective_names(spec) is not None and all(map(NONNEG.accepts, weights)) and any(w > 0 for w in weights)


COUNT, COUNT0 = number(1, integer=True), number(0, integer=True)
POSITIVE, NONNEG, FINITE = number(0, lo_open=True), number(0), number()
PROBABILITY = number(0, 1)
RATE = number(0, 1, hi_open=True)  # 1 would drop / mask everything
OPEN_FRACTION = number(0, 1, lo_open=True, hi_open=True)
FLAG = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string")
SPAN = Rule(lambda v: check_span(v, "") == v, "a number of epochs >= 0 or a share of the run like '40%'")  # schedules.Span
SCALE = pair(number(0, 1, lo_open=True))  # RandomResizedCrop area fractions
OPTIMIZER_KEYS: dict[str, tuple[str, ...]] = {  # engine/optim.py: SCHEDULE_KEYS + OPTIMIZER_ARGS
    name: ("name", "lr", "min_lr", "warmup_epochs", "weight_decay", "weight_decay_end", "scale_lr", *extra)
    for name, extra in {"adamw": ("betas", "eps", "fused"), "sgd": ("momentum", "nesterov"),
                        "lars": ("momentum", "eps", "trust_coeff"), "lamb": ("betas", "eps")}.items()
}

KEYS: dict[str, Rule] = {
    "output_dir": TEXT,
    "seed": number(0, 2**63 - 1, integer=True),
    "epochs": COUNT, "batch_size": COUNT, "num_workers": COUNT0, "log_interval": COUNT, "max_bad_steps": COUNT,
    "max_iterations": COUNT, "save_interval": COUNT0, "checkpoint_interval": COUNT0,
    "checkpoint_async": FLAG, "compile": FLAG, "channels_last": FLAG, "tf32": FLAG,
    "device": one_of("auto", "cpu", "cuda"),
    "precision": one_of("fp32", "bf16", "fp16"),
    "grad_clip": NONNEG,  # 0 (or null) = off
    "grad_clip_mode": one_of("global", "per_tensor"),
    "optimizer.name": one_of(*OPTIMIZER_KEYS, casefold=True),
    "optimizer.lr": POSITIVE, "optimizer.min_lr": NONNEG, "optimizer.warmup_epochs": NONNEG,
    "optimizer.weight_decay": NONNEG, "optimizer.weight_decay_end": NONNEG, "optimizer.eps": POSITIVE,
    "optimizer.betas": pair(RATE, ordered=False), "optimizer.momentum": RATE, "optimizer.trust_coeff": POSITIVE,
    # typed by the defaults, but a renamed optimizer node is free-form: its flags are checked here
    "optimizer.scale_lr": FLAG, "optimizer.nesterov": FLAG, "optimizer.fused": either(FLAG, one_of("auto", "foreach")),
    # online evaluation (engine/online_eval.py); these are the node's only keys (CLOSED_NODES)
    "online_eval.knn_every": SPAN, "online_eval.knn_k": COUNT, "online_eval.knn_temperature": POSITIVE,
    "online_eval.train_samples": COUNT, "online_eval.val_samples": COUNT, "online_eval.val_split": TEXT,
    "online_eval.towers": one_of("exported", "student"), "online_eval.batch_size": COUNT,
    "online_eval.collapse_indicators": FLAG, "online_eval.collapse_warn_after": COUNT0,
    "tuned_on.data": TEXT, "tuned_on.advice": TEXT,  # engine/recipe_scope.py
}

CLOSED_NODES: tuple[str, ...] = ("online_eval", "tuned_on")
"""Plain nodes whose keys are exactly those ``KEYS`` has rules for: a key added with ``+`` is refused too."""

ARGUMENTS: dict[str, Rule] = {
    # sizes and counts (models, heads, decoders, transforms)
    **dict.fromkeys(("img_size", "patch_size", "image_size", "size", "global_size", "local_size", "resize_size",
                     "depth", "layers", "heads", "num_heads", "width", "embed_dim", "vocab_size", "context_length",
                     "out_dim", "patch_out_dim", "head_hidden_dim", "head_bottleneck_dim", "head_nlayers",
                     "decoder_dim", "decoder_depth", "decoder_heads", "decoder_width", "crops",
                     "chunk_size"), COUNT),  # chunk_size: rows per contrastive logit block (null = unchunked)
    **dict.fromkeys(("global_crops", "local_crops", "simclr_views", "eot_token_id"), COUNT0),
    "mlp_ratio": POSITIVE,
    "hidden_dims": items(COUNT, nonempty=False),
    "vit.arch": one_of("vit_tiny", "vit_small", "vit_base", "vit_large"),
    "vit.pos_embed": one_of("learned", "sincos"),
    "drop_path_rate": RATE,
    # transforms
    **dict.fromkeys(("scale", "global_scale", "local_scale", "simclr_scale"), SCALE),
    **dict.fromkeys(("hflip", "color_jitter_p"), PROBABILITY),
    "mean": items(PROBABILITY, 3), "std": items(POSITIVE, 3),  # of pixel values in [0, 1], per RGB channel
    # data sets
    **dict.fromkeys(("root", "path", "image_key", "caption_key"), TEXT),
    "urls": either(TEXT, items(TEXT)), "templates": items(TEXT),
    "caption_noise": PROBABILITY, "max_bad_fraction": PROBABILITY, "val_fraction": OPEN_FRACTION,
    **dict.fromkeys(("max_bad_samples", "holdout", "shuffle_buffer"), COUNT0),
    **dict.fromkeys(("limit", "num_samples", "caption_reservoir"), COUNT),
    "Digits.split": one_of("train", "val", "all"),
    "FashionMNIST.split": one_of("train", "holdout", "test", "val"),
    # pipelines and objectives
    **dict.fromkeys(("vision", "text"), Rule(lambda v: isinstance(v, Mapping) and v.get("name") in MODELS,
                                             "a MODELS node with its name, e.g. {name: vit, arch: vit_small}")),
    "objectives": Rule(_objectives, "objective names (python -m hirl_like.registry) as a non-empty list, "
                                    "a {name: weight >= 0} mapping or a clip_ibot-style string"),
    **dict.fromkeys(("ema_momentum", "ema_momentum_end", "center_momentum", "center_momentum2",
                     "hard_labels_weight_end"), PROBABILITY),
    **dict.fromkeys(("teacher_temp", "warmup_teacher_temp", "student_temp", "teacher_patch_temp",
                     "warmup_teacher_patch_temp", "soft_temperature", "temperature", "max_logit_scale"), POSITIVE),
    **dict.fromkeys(("warmup_teacher_temp_epochs", "freeze_last_layer", "hard_labels_weight_epochs", "ema_half_life"),
                    SPAN),
    **dict.fromkeys(("lambda1", "lambda2"), NONNEG),
    **dict.fromkeys(("init_logit_scale", "init_logit_bias"), FINITE),
    **dict.fromkeys(("mask_ratio", "mask_prob"), OPEN_FRACTION),  # 0 leaves nothing to predict, 1 nothing to see
    "mask_ratio_schedule": pair(OPEN_FRACTION, ordered=False),  # mae: [start, end]
    "clip.image_mask": one_of("none", "random", "attentive"), "image_mask_ratio": RATE,
    **dict.fromkeys(("pred_ratio", "pred_ratio_var"), either(RATE, items(RATE))),
    "min_aspect": number(0, 1, lo_open=True),
    # builder towers (models/builders): LiT lock, LoRA, the text pooler
    "lock": FLAG, "adapter": one_of("lora"), "pooler": one_of("cls", "mean", "eos"),
    "norm": one_of("bn", "ln"),
}


@dataclass(frozen=True)
class Relation:
    """Arguments of one node that must agree: ``test(*values)`` over ``keys`` (paths relative to the
    node) of each node of the ``components``, with the constructor's defaults filled in; the refusal
    reads ``KEY=VALUE: FIRST_KEY must be ALLOWED (every key=value)``."""

    components: tuple[str, ...]
    keys: tuple[str, ...]
    test: Callable[..., bool]
    allowed: str


def _multiple(a: int, b: int) -> bool:
    return a % b == 0


RELATIONS: tuple[Relation, ...] = (
    Relation(("vit",), ("img_size", "patch_size"), _multiple, "a multiple of patch_size"),
    Relation(("vit",), ("embed_dim", "num_heads"), _multiple, "a multiple of num_heads"),
    Relation(("text_transformer",), ("width", "heads"), _multiple, "a multiple of heads"),
    Relation(("text_transformer",), ("eot_token_id", "vocab_size"), lambda e, v: e < v, "below vocab_size"),
    Relation(("mae",), ("decoder_dim", "decoder_heads"), _multiple, "a multiple of decoder_heads"),
    Relation(("mae",), ("decoder_dim",), lambda d: d % 4 == 0, "a multiple of 4 (the decoder's sin-cos table)"),
    Relation(("mlm",), ("decoder_width", "decoder_heads"), _multiple, "a multiple of decoder_heads"),
    Relation(("ibot",), ("out_dim", "patch_out_dim", "shared_head"), lambda a, b, shared: not shared or a == b,
             "equal to patch_out_dim when shared_head is true (one head for both)"),
    Relation(("MultiCropTransform",), ("global_crops", "local_crops", "simclr_views"), lambda g, lo, s: g + lo + s > 0,
             "at least 1 view together with local_crops and simclr_views"),
    Relation(("CLIP", "Harmony"), ("text.embed_dim", "embed_dim"), lambda a, b: a == b,
             "equal to the pipeline's embed_dim, which the text tower is built with"),
)

# Schedule lengths (epochs, or a share of the run like '40%') and what holds while they last: longer
# than ``epochs`` is refused, over half of it warned about (1 epoch with a 1-epoch warm-up is all warm-up).
WARMUPS: dict[str, str] = {
    "optimizer.warmup_epochs": "the lr is still warming up",
    "warmup_teacher_temp_epochs": "the teacher temperature is still warming up",  # any active objective's node
    "freeze_last_layer": "the head's last layer is frozen",
}
