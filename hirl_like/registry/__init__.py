"""Global registries: a config node's ``name`` picks a class, its other keys are the constructor's arguments.

Usage::

    @LOSSES.register()            # key is the class name
    class ClipLoss(nn.Module): ...

    @MODELS.register("tiny_vit", aliases=("TinyViT",))
    def build_tiny_vit(depth: int = 4) -> nn.Module: ...

    loss = LOSSES.build({"name": "ClipLoss"})

Errors say what to fix: an unknown name lists the available names and the closest match, an
unknown argument names the class, its module, its accepted parameters and the closest match,
and a duplicate says where the first one is defined.

``python -m hirl_like.registry`` (:mod:`hirl_like.registry.__main__`) prints every entry of every
global registry.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class RegistryError(KeyError, ValueError):
    """A lookup or build failed; the message says what to fix.

    Subclasses both KeyError (lookups) and ValueError (bad arguments) so callers can catch either.
    """

    def __str__(self) -> str:  # KeyError would quote the message; print it as written.
        return str(self.args[0]) if self.args else ""


def _closest(word: str, candidates: list[str]) -> str:
    """A ' Did you mean ...?' hint, or '' when nothing is close."""
    matches = difflib.get_close_matches(word, candidates, n=3, cutoff=0.5)
    if not matches:
        lowered = {c.lower(): c for c in candidates}
        # a second try ignoring case ('VIT' -> 'vit'), stricter so that it does not suggest noise
        matches = [lowered[m] for m in difflib.get_close_matches(word.lower(), list(lowered), n=3, cutoff=0.75)]
    return f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


def _where(obj: Any) -> str:
    """'module:qualname' of a registered object."""
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


class Registry:
    """A name -> class/function table with decorator registration and config-driven building."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._entries: dict[str, Callable[..., Any]] = {}
        self._aliases: dict[str, str] = {}

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str | None = None, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (default: its ``__name__``) and ``aliases``.

        ``@REG.register`` without parentheses also works (the class itself is passed as ``name``;
        without this guard the decorator would silently replace the class by a function).
        """
        if name is not None and not isinstance(name, str):
            if callable(name) and not aliases:
                self.add(name)
                return name  # type: ignore[return-value]
            raise RegistryError(f"{self.name}.register(name=...) takes a string, got {name!r}.")

        def decorator(obj: T) -> T:
            self.add(obj, name=name, aliases=aliases)
            return obj

        return decorator

    def add(self, obj: Callable[..., Any], name: str | None = None, aliases: tuple[str, ...] = ()) -> None:
        if not callable(obj):
            raise RegistryError(f"{self.name} registry: can only register classes or functions, got {obj!r}.")
        if isinstance(aliases, str):  # aliases="ViT" would register 'V', 'i', 'T'
            aliases = (aliases,)
        key = name or obj.__name__
        for k in (key, *aliases):
            if not isinstance(k, str) or not k:
                raise RegistryError(f"{self.name} registry: names must be non-empty strings, got {k!r}.")
            if k in self:
                existing = self.get(k)
                if existing is obj:  # re-import of the same module object: harmless
                    continue
                raise RegistryError(
                    f"{self.name} registry: {k!r} is already registered by {_where(existing)}; "
                    f"cannot register {_where(obj)} under the same name. Pick another name."
                )
        self._entries[key] = obj
        for alias in aliases:
            self._aliases[alias] = key

    # -- lookup ------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, Callable[..., Any]]]:
        return [(k, self._entries[k]) for k in self.keys()]

    def aliases_of(self, name: str) -> list[str]:
        return sorted(a for a, k in self._aliases.items() if k == name)

    def get(self, name: str) -> Callable[..., Any]:
        if not isinstance(name, str):
            raise RegistryError(
                f"{self.name} registry: a name must be a string, got {type(name).__name__} {name!r}. "
                f"Available: {', '.join(self.keys()) or '(none)'}."
            )
        if name in self._entries:
            return self._entries[name]
        if name in self._aliases:
            return self._entries[self._aliases[name]]
        names = self.keys() + sorted(self._aliases)
        raise RegistryError(
            f"{self.name} registry has no entry {name!r}.{_closest(str(name), names)} "
            f"Available: {', '.join(self.keys()) or '(none)'}."
        )

    # -- building ----------------------------------------------------------------------------
    def build(self, cfg: Mapping[str, Any] | Any, **extra: Any) -> Any:
        """Build ``cfg['name']`` with the node's other keys (plus ``extra``) as keyword arguments.

        ``cfg`` may be a dict or an OmegaConf node; nested nodes are passed as plain containers.
        """
        cfg = _to_dict(cfg)
        if "name" not in cfg:
            raise RegistryError(
                f"{self.name} config node has no 'name' key; set one of: {', '.join(self.keys())}."
            )
        name = cfg.pop("name")
        obj = self.get(name)
        kwargs = {**cfg, **extra}
        check_arguments(obj, kwargs, context=f"{self.name} {name!r}", require_all=True)
        return obj(**kwargs)

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {len(self)} entries)"


def _to_dict(cfg: Any) -> dict[str, Any]:
    try:  # accept OmegaConf nodes without importing omegaconf at module load
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return dict(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(cfg, Mapping):
        raise RegistryError(f"expected a config mapping with a 'name' key, got {type(cfg).__name__}: {cfg!r}")
    return dict(cfg)


def _keyword_parameters(obj: Callable[..., Any]) -> list[inspect.Parameter] | None:
    """The parameters ``obj`` accepts by keyword (None when its signature cannot be read)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # some builtins have no signature: nothing to check
        return None
    return [p for p in sig.parameters.values() if p.kind is not p.VAR_POSITIONAL and p.name != "self"]


def accepted_parameters(obj: Callable[..., Any]) -> tuple[list[str], bool]:
    """The keyword names ``obj`` accepts, and whether it takes ``**kwargs``."""
    params = _keyword_parameters(obj)
    if params is None:
        return [], True
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    return names, has_var_kw


def check_arguments(
    obj: Callable[..., Any], kwargs: Mapping[str, Any], context: str, *, require_all: bool = False
) -> None:
    """Raise RegistryError naming the class, its module, its parameters and the closest match.

    ``require_all`` (used by :meth:`Registry.build`, which has every argument) also reports
    required parameters that are missing, instead of a bare TypeError from the call.
    """
    names, has_var_kw = accepted_parameters(obj)
    if not has_var_kw:
        for key in kwargs:
            if key not in names:
                raise RegistryError(
                    f"{context} ({_where(obj)}) got an unknown argument {key!r}.{_closest(str(key), names)} "
                    f"It accepts: {', '.join(names) or '(no arguments)'}."
                )
    if require_all:
        params = _keyword_parameters(obj) or []
        missing = [
            p.name
            for p in params
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in kwargs
        ]
        if missing:
            raise RegistryError(
                f"{context} ({_where(obj)}) is missing required argument(s): {', '.join(missing)}. "
                f"Add them to its config node. It accepts: {', '.join(names)}."
            )


MODELS = Registry("MODELS")
PIPELINES = Registry("PIPELINES")
LOSSES = Registry("LOSSES")
DATASETS = Registry("DATASETS")
OBJECTIVES = Registry("OBJECTIVES")
TRANSFORMS = Registry("TRANSFORMS")

GLOBAL_REGISTRIES: tuple[Registry, ...] = (MODELS, PIPELINES, OBJECTIVES, LOSSES, DATASETS, TRANSFORMS)


def describe_registries(registries: tuple[Registry, ...] = GLOBAL_REGISTRIES) -> str:
    """One block per registry: ``name [aliases] -> module:qualname``."""
    lines: list[str] = []
    for reg in registries:
        lines.append(f"{reg.name} ({len(reg)})")
        for key, obj in reg.items():
            aliases = reg.aliases_of(key)
            alias_text = f" [{', '.join(aliases)}]" if aliases else ""
            lines.append(f"  {key}{alias_text} -> {_where(obj)}")
    return "\n".join(lines)
