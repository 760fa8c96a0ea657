"""Global registries: a config node's ``name`` picks a class, its other keys are the constructor's arguments.

Usage::

    @LOSSES.register()            # key is the class name
    class ClipLoss(nn.Module): ...

    @MODELS.register("vit", aliases=("ViT",))
    def build_vit(...): ...

    loss = LOSSES.build({"name": "ClipLoss", "cache_labels": True})

Errors say what to fix: an unknown name lists the available names and the closest match, an
unknown argument names the class, its module, its accepted parameters and the closest match,
and a duplicate says where the first one is defined.

``python -m hirl_like.registry`` prints every entry of every global registry.
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
        matches = [lowered[m] for m in difflib.get_close_matches(word.lower(), list(lowered), n=3, cutoff=0.5)]
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
        """Decorator: register ``obj`` under ``name`` (default: its ``__name__``) and ``aliases``."""

        def decorator(obj: T) -> T:
            self.add(obj, name=name, aliases=aliases)
            return obj

        return decorator

    def add(self, obj: Callable[..., Any], name: str | None = None, aliases: tuple[str, ...] = ()) -> None:
        key = name or obj.__name__
        for k in (key, *aliases):
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
        return name in self._entries or name in self._aliases

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
        check_arguments(obj, kwargs, context=f"{self.name} {name!r}")
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


def accepted_parameters(obj: Callable[..., Any]) -> tuple[list[str], bool]:
    """The keyword names ``obj`` accepts, and whether it takes ``**kwargs``."""
    sig = inspect.signature(obj)
    names = [
        p.name
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    ]
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return names, has_var_kw


def check_arguments(obj: Callable[..., Any], kwargs: Mapping[str, Any], context: str) -> None:
    """Raise RegistryError naming the class, its module, its parameters and the closest match."""
    names, has_var_kw = accepted_parameters(obj)
    if has_var_kw:
        return
    for key in kwargs:
        if key not in names:
            raise RegistryError(
                f"{context} ({_where(obj)}) got an unknown argument {key!r}.{_closest(key, names)} "
                f"It accepts: {', '.join(names) or '(no arguments)'}."
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


def main() -> None:
    import hirl_like  # noqa: F401  (imports every submodule so that all entries register)

    print(describe_registries())


if __name__ == "__main__":
    main()
