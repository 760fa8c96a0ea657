"""Find a pre-trained backbone in any common checkpoint layout and load it strictly.

Layouts met in practice (all handled by :func:`extract_state_dict`):

- flat timm / open_clip state dict:  {"cls_token": ..., "blocks.0.attn.qkv.weight": ...}
- DINO / iBOT:                       {"teacher": {"backbone.cls_token": ...},
                                      "student": {"module.backbone.cls_token": ...}, "args": ...}
- DeiT / MAE / this toolbox style:   {"model": {...}} or {"model": {"module.backbone.x": ...}}
- Lightning / misc:                  {"state_dict": {"model.x": ...}}

Loading is always strict: a checkpoint that does not fit the model raises a ValueError naming
the missing / unexpected / mis-shaped keys and the prefixes to try. Nothing is loaded silently
with strict=False, because a half-initialised backbone gives plausible-looking but wrong numbers.
Reading the file itself is :mod:`hirl_like.evaluation.checkpoint_files`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from hirl_like.evaluation.checkpoint_files import common_prefixes, describe_checkpoint

logger = logging.getLogger(__name__)

DEFAULT_IGNORE_PREFIXES: tuple[str, ...] = ("head.", "fc.", "mask_token")
# Sub-dict / prefix names that hold the weights one usually evaluates: the EMA teacher first.
_EMA_NAMES = {"ema", "model_ema", "ema_model", "state_dict_ema", "ema_state_dict", "module_ema", "teacher_ema"}
_SHOW = 10  # keys listed per category in error messages


# ----------------------------------------------------------------------------------------------
# Finding the backbone inside a checkpoint
# ----------------------------------------------------------------------------------------------


@dataclass
class StateDictLocation:
    """Where the backbone weights sit: ``checkpoint[path[0]][path[1]]...``, keys starting with ``prefix``."""

    path: tuple[str, ...]
    prefix: str
    covered: int  # expected keys found
    expected: int  # expected keys in total
    extras: list[str] = field(default_factory=list)  # stripped keys the model does not expect (not ignorable)
    alternatives: list[str] = field(default_factory=list)  # other complete fits, described

    @property
    def complete(self) -> bool:
        return self.covered == self.expected

    def describe(self) -> str:
        where = "".join(f"[{p!r}]" for p in self.path) or " (top level)"
        return f"checkpoint{where} with key prefix {self.prefix!r}"

    def as_flags(self) -> str:
        flags = []
        if self.path:
            flags.append(f"--model_prefix {'.'.join(self.path)}")
        if self.prefix:
            flags.append(f"--backbone_prefix {self.prefix}")
        return " ".join(flags) or "(no prefix flags: the keys match as they are)"


def _tensor_dicts(node: Mapping, path: tuple[str, ...] = (), depth: int = 4):
    """Yield (path, {key: tensor}) for every nested dict holding tensors, depth-first."""
    tensors = {k: v for k, v in node.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if tensors:
        yield path, tensors
    if depth > 0:
        for k, v in node.items():
            if isinstance(k, str) and isinstance(v, Mapping):
                yield from _tensor_dicts(v, (*path, k), depth - 1)


def _preference(path: tuple[str, ...], prefix: str) -> int:
    """0 teacher, 1 EMA-like, 2 neutral, 3 student: the weights one evaluates come first."""
    parts = {p.lower() for p in (*path, *prefix.split(".")) if p}
    if "teacher" in parts:
        return 0
    if parts & _EMA_NAMES or any(p.endswith("_ema") or p.startswith("ema_") for p in parts):
        return 1
    if "student" in parts:
        return 3
    return 2


def _is_ignorable(key: str, ignore_prefixes: Sequence[str]) -> bool:
    return any(key.startswith(p) for p in ignore_prefixes)


def locate_state_dict(
    checkpoint: Mapping,
    expected_keys: Collection[str],
    ignore_prefixes: Sequence[str] = DEFAULT_IGNORE_PREFIXES,
    model_prefix: str | None = None,
    backbone_prefix: str | None = None,
) -> StateDictLocation | None:
    """Find the (sub-dict, key prefix) whose stripped keys best cover ``expected_keys``.

    Ranking: most expected keys covered (a complete cover first); then an exact cover (no
    leftover keys except ``ignore_prefixes`` extras); then teacher > EMA-like > other > student
    (by sub-dict and prefix names); then the shortest prefix; then the shallowest sub-dict.
    ``model_prefix`` / ``backbone_prefix``, when given, restrict the search. Returns None when
    no expected key is found anywhere.
    """
    expected = set(expected_keys)
    if not expected:
        raise ValueError("expected_keys is empty; pass model.state_dict().keys().")
    if backbone_prefix is not None:
        backbone_prefix = _normalise_prefix(backbone_prefix)
    root: Mapping = checkpoint if model_prefix is None else {model_prefix: _select_subdict(checkpoint, model_prefix)}
    candidates = []
    for path, tensors in _tensor_dicts(root):
        if model_prefix is not None:
            if path != (model_prefix,):
                continue
            path = tuple(model_prefix.split(".")) if model_prefix not in checkpoint else (model_prefix,)
        prefixes: dict[str, set[str]] = {}
        for key in tensors:
            cuts = [0] + [i + 1 for i, ch in enumerate(key) if ch == "."]
            for cut in cuts:
                if key[cut:] in expected:
                    prefixes.setdefault(key[:cut], set()).add(key[cut:])
        if backbone_prefix is not None:
            prefixes = {p: s for p, s in prefixes.items() if p == backbone_prefix}
        for prefix, covered in prefixes.items():
            stripped = [k[len(prefix):] for k in tensors if k.startswith(prefix)]
            extras = [k for k in stripped if k not in expected and not _is_ignorable(k, ignore_prefixes)]
            candidates.append(StateDictLocation(path, prefix, len(covered), len(expected), extras))
    if not candidates:
        return None
    candidates.sort(
        key=lambda c: (-c.covered, bool(c.extras), _preference(c.path, c.prefix), len(c.prefix), len(c.path))
    )
    best = candidates[0]
    best.alternatives = [c.describe() for c in candidates[1:] if c.complete][:5]
    return best


def _select_subdict(checkpoint: Mapping, model_prefix: str) -> Mapping:
    """checkpoint[model_prefix], or a dotted path into nested dicts ("model.ema")."""
    if model_prefix in checkpoint:
        node = checkpoint[model_prefix]
    else:
        node = checkpoint
        for part in model_prefix.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ValueError(
                    f"model_prefix {model_prefix!r} is not a key of the checkpoint. The checkpoint is a "
                    f"{describe_checkpoint(checkpoint)}"
                )
            node = node[part]
    if not isinstance(node, Mapping):
        raise ValueError(f"checkpoint[{model_prefix!r}] is a {type(node).__name__}, not a dict of weights.")
    return node


def _normalise_prefix(prefix: str) -> str:
    prefix = prefix.strip()
    return prefix if not prefix or prefix.endswith(".") else prefix + "."


def extract_state_dict(
    checkpoint: Mapping,
    model_prefix: str | None = None,
    backbone_prefix: str | None = None,
    expected_keys: Collection[str] | None = None,
    ignore_prefixes: Sequence[str] = DEFAULT_IGNORE_PREFIXES,
) -> dict[str, Tensor]:
    """The backbone's state dict from a checkpoint, keys renamed to what the model expects.

    Args:
        checkpoint: the loaded dict (see :func:`load_checkpoint_file`).
        model_prefix: key of the sub-dict to use ("teacher", "model", "state_dict", "student";
            a dotted path walks nested dicts). None: decide automatically (needs expected_keys)
            or use the top level.
        backbone_prefix: key prefix to keep and strip ("backbone.", "module.backbone."; the
            trailing dot is optional). Keys without it are dropped.
        expected_keys: the model's keys (``model.state_dict().keys()``). With it, whatever of
            model_prefix / backbone_prefix is missing is detected: the (sub-dict, prefix) whose
            stripped keys cover expected_keys, preferring an exact cover, then the teacher, then
            EMA weights, then the shortest prefix. The choice is logged.
        ignore_prefixes: known non-backbone extras (classifier heads, iBOT's mask token) that are
            dropped when the model does not expect them. Used only with expected_keys; any other
            unexpected key is kept so that strict loading reports it.

    Returns:
        {key: tensor}. Raises ValueError (with a description of the checkpoint) when nothing fits.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"checkpoint must be a dict, got {type(checkpoint).__name__}.")
    if backbone_prefix is not None:
        backbone_prefix = _normalise_prefix(backbone_prefix)

    if expected_keys is not None and (model_prefix is None or backbone_prefix is None):
        loc = locate_state_dict(checkpoint, expected_keys, ignore_prefixes, model_prefix, backbone_prefix)
        if loc is None:
            hints = ", ".join(f"{p!r} ({n} keys)" for p, n in _all_prefixes(checkpoint))
            raise ValueError(
                "none of the model's parameter names occurs in the checkpoint, under any sub-dict or key "
                "prefix: it was probably trained for another architecture. Checkpoint: "
                f"{describe_checkpoint(checkpoint)}\n"
                f"Key prefixes present: {hints or 'none'}."
            )
        note = f"using {loc.describe()} ({loc.covered}/{loc.expected} expected keys found)"
        if loc.alternatives:
            note += f"; also fit: {'; '.join(loc.alternatives)}"
        # An ambiguous or partial choice is worth the user's attention; a unique exact one is not.
        (logger.info if loc.complete and not loc.alternatives else logger.warning)("extract_state_dict: %s", note)
        node: Mapping = checkpoint
        for part in loc.path:
            node = node[part]
        source, prefix = node, loc.prefix
    else:
        source = checkpoint if model_prefix is None else _select_subdict(checkpoint, model_prefix)
        prefix = backbone_prefix or ""
        if model_prefix is None and backbone_prefix is None and any(isinstance(v, Mapping) for v in source.values()):
            raise ValueError(
                "the checkpoint nests its weights in sub-dicts; pass model_prefix (e.g. --model_prefix "
                f"{next(k for k, v in source.items() if isinstance(v, Mapping))}) or expected_keys to detect it. "
                f"Checkpoint: {describe_checkpoint(checkpoint)}"
            )

    state = {
        k[len(prefix):]: v
        for k, v in source.items()
        if isinstance(k, str) and isinstance(v, Tensor) and k.startswith(prefix)
    }
    if not state:
        present = ", ".join(f"{p!r} ({n} keys)" for p, n in common_prefixes([k for k in source if isinstance(k, str)]))
        raise ValueError(
            f"no tensor key starts with backbone_prefix {prefix!r}. Prefixes present: {present or 'none'}. "
            f"Checkpoint: {describe_checkpoint(checkpoint)}"
        )
    if expected_keys is not None:
        expected = set(expected_keys)
        dropped = [k for k in state if k not in expected and _is_ignorable(k, ignore_prefixes)]
        for k in dropped:
            del state[k]
        if dropped:
            logger.info(
                "extract_state_dict: dropped %d known non-backbone keys (%s)", len(dropped), ", ".join(dropped[:_SHOW])
            )
    return state


def _all_prefixes(checkpoint: Mapping) -> list[tuple[str, int]]:
    """Common key prefixes of every tensor dict in the checkpoint, sub-dict path included."""
    out: list[tuple[str, int]] = []
    for path, tensors in _tensor_dicts(checkpoint):
        head = "".join(f"[{p}]" for p in path)
        out += [(head + p, n) for p, n in common_prefixes(list(tensors), limit=4)]
    return out[:_SHOW]


# ----------------------------------------------------------------------------------------------
# Strict loading
# ----------------------------------------------------------------------------------------------


def _listing(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    more = f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"  {title} ({len(keys)}): {shown}{more}"


def load_backbone_strict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with an error that says what to fix.

    On any missing key, unexpected key or shape mismatch, raises ValueError listing the first
    keys of each kind (with counts), both shapes of each mismatch, the key prefixes present and,
    when the model's keys can be found under some sub-dict / prefix, the --model_prefix /
    --backbone_prefix flags that select them. Never falls back to strict=False.
    """
    own = model.state_dict()
    nested = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, Tensor)}
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in tensors and tensors[k].shape != own[k].shape
    ]
    if not (missing or unexpected or mismatched or nested):
        model.load_state_dict(tensors, strict=True)
        return

    lines = [f"the checkpoint does not match {type(model).__name__} "
             f"({len(own)} keys expected, {len(tensors)} tensors given):"]
    if nested:
        lines.append(_listing("non-tensor entries (a whole checkpoint was passed, not a state dict)", nested))
    if missing:
        lines.append(_listing("missing keys", missing))
    if unexpected:
        lines.append(_listing("unexpected keys", unexpected))
    if mismatched:
        lines.append(_listing("shape mismatches", mismatched))
    present = common_prefixes(list(tensors))
    if present:
        lines.append("  key prefixes in the checkpoint: " + ", ".join(f"{p!r} ({n} keys)" for p, n in present))
    loc = locate_state_dict(state_dict, own.keys()) if own else None
    if loc is not None and loc.complete and (loc.path or loc.prefix):
        lines.append(f"  hint: the model's keys are all in {loc.describe()}: try {loc.as_flags()}")
    elif missing and unexpected and not mismatched:
        lines.append(
            "  hint: if the missing and unexpected keys look unrelated, the checkpoint is for another architecture."
        )
    if mismatched:
        lines.append("  hint: shape mismatches usually mean a different model size, patch size or image resolution.")
    raise ValueError("\n".join(lines))
