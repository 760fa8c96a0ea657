"""Model names of the builders (open_clip, timm, torchvision), checked before anything is built.

An unknown name is refused with the closest names of the builder's own list (``difflib`` over
``open_clip.list_models()``, ``timm.list_models()``, ``torchvision.models.list_models()``), so a
typo (``vit_tiny_patch16_244``) reads as one, not as a deep library traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

CLOSE_NAMES = 5  # close matches shown in a refusal


def close_names(name: str, available: Sequence[str], n: int = CLOSE_NAMES) -> list[str]:
    """Up to ``n`` names of ``available`` closest to ``name`` (case-insensitive difflib ratio >= 0.5)."""
    lowered = {a.lower(): a for a in available}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


def check_model_name(builder: str, name: object, available: Sequence[str], key: str = "model") -> str:
    """``name`` when ``available`` lists it, else a ValueError naming the closest names.

    Args:
        builder: the builder's config name (``open_clip``, ``timm``, ``torchvision``).
        name: the configured model name.
        available: every name the builder knows.
        key: the config key that holds the name (for the message).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{builder}: {key} must be a model name (a non-empty string), got {name!r}.")
    if name in available:
        return name
    close = close_names(name, available)
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise ValueError(
        f"{builder}: unknown {key} {name!r}.{hint} ({len(available)} names in all; list them with "
        f"{LISTERS.get(builder, 'the builder')}.)"
    )


LISTERS: dict[str, str] = {
    "open_clip": "python -c 'import open_clip; print(open_clip.list_models())'",
    "timm": "python -c 'import timm; print(timm.list_models())'",
    "torchvision": "python -c 'import torchvision; print(torchvision.models.list_models())'",
}


def lazy_list(loader: Callable[[], Sequence[str]]) -> Callable[[], list[str]]:
    """A cached model-name list (timm's has ~1,400 names and takes a moment to gather)."""
    cache: list[list[str]] = []

    def get() -> list[str]:
        if not cache:
            cache.append(list(loader()))
        return cache[0]

    return get
