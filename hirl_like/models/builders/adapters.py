"""Locking (LiT) and LoRA adapters of a builder tower's network.

``lock: true`` (LiT, Zhai et al. 2022; ITRA's default for its pretrained towers): every weight
of the network is frozen (``requires_grad=False``, so the optimizer never sees it and weight
decay cannot move it) and the network is kept in eval mode whatever the pipeline's mode, so
BatchNorm running statistics and dropout do not move either: the tower is bit-identical after any
number of steps. The tower's projection head is not part of the network and still trains (as in
ITRA, whose heads sit on the locked backbones); ``head: {type: none}`` has nothing to train.

``adapter: lora`` (Hu et al. 2022) through ``peft.inject_adapter_in_model``: low-rank updates
``W x + (alpha / r) * B A x`` on the network's linear and attention layers (every ``nn.Linear`` and
``nn.MultiheadAttention`` by default, or the modules named in ``lora.target_modules``); only the
``lora_A`` / ``lora_B`` weights train, every base weight is frozen. ``B`` starts at zero, so the
adapted tower starts as the base tower. Without ``lock`` the network still follows the pipeline's
train/eval mode (dropout, BatchNorm statistics); with ``lock: true`` it stays in eval mode and only
the adapters change.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from torch import nn

from hirl_like.models.builders.plain import to_plain

ADAPTERS = ("lora",)
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None}


def check_adapter(where: str, adapter: str | None, lora: Mapping[str, Any] | None) -> dict[str, Any]:
    """The LoRA options (defaults filled in) after checking ``adapter`` and ``lora``."""
    if adapter is not None and adapter not in ADAPTERS:
        raise ValueError(f"{where}.adapter must be null or one of {', '.join(ADAPTERS)}, got {adapter!r}.")
    options = dict(to_plain(lora) or {})
    if options and adapter is None:
        raise ValueError(f"{where}.lora is set but adapter is null: add adapter: lora or remove lora.")
    for key in options:
        if key not in LORA_DEFAULTS:
            close = difflib.get_close_matches(str(key), list(LORA_DEFAULTS), n=1)
            raise ValueError(f"{where}.lora got an unknown key {key!r}"
                             f"{f'; did you mean {close[0]!r}?' if close else '.'} Keys: {', '.join(LORA_DEFAULTS)}.")
    options = {**LORA_DEFAULTS, **options}
    if not isinstance(options["r"], int) or options["r"] < 1:
        raise ValueError(f"{where}.lora.r must be an int >= 1, got {options['r']!r}.")
    if not 0.0 <= float(options["dropout"]) < 1.0:
        raise ValueError(f"{where}.lora.dropout must be in [0, 1), got {options['dropout']!r}.")
    return options


def default_lora_targets(network: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` and ``nn.MultiheadAttention`` of ``network``, except the output
    projection inside an attention module (peft adapts that one as part of the attention)."""
    attention = {name for name, m in network.named_modules() if isinstance(m, nn.MultiheadAttention)}
    names = []
    for name, module in network.named_modules():
        inside = any(name.startswith(a + ".") for a in attention)
        if isinstance(module, nn.MultiheadAttention) or (isinstance(module, nn.Linear) and not inside):
            names.append(name)
    return names


def add_lora(network: nn.Module, options: Mapping[str, Any], where: str) -> nn.Module:
    """Inject LoRA adapters into ``network`` in place; only the adapter weights keep
    ``requires_grad``. Returns ``network``."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = to_plain(options.get("target_modules")) or default_lora_targets(network)
    if not targets:
        raise ValueError(
            f"{where}.adapter=lora: {type(network).__name__} has no nn.Linear or nn.MultiheadAttention layer to adapt; "
            "name the layers in lora.target_modules (peft also adapts Conv2d)."
        )
    config = LoraConfig(r=int(options["r"]), lora_alpha=float(options["alpha"]),
                        lora_dropout=float(options["dropout"]), target_modules=list(targets))
    try:
        inject_adapter_in_model(config, network)
    except ValueError as err:
        raise ValueError(f"{where}.lora.target_modules={list(targets)}: {err}") from None
    for name, param in network.named_parameters():
        param.requires_grad_("lora_" in name)
    if not any(p.requires_grad for p in network.parameters()):
        raise ValueError(f"{where}.adapter=lora: no adapter weight was created for targets {list(targets)}.")
    return network


def freeze(network: nn.Module) -> nn.Module:
    """Every parameter of ``network`` without gradient; returns it in eval mode."""
    for param in network.parameters():
        param.requires_grad_(False)
    return network.eval()


def prepare_network(network: nn.Module, where: str, lock: bool, adapter: str | None,
                    lora: Mapping[str, Any] | None) -> nn.Module:
    """Apply ``lock`` (freeze, eval mode) and ``adapter`` (LoRA; adapters stay trainable)."""
    options = check_adapter(where, adapter, lora)
    if not isinstance(lock, bool):
        raise ValueError(f"{where}.lock must be true or false, got {lock!r}.")
    if lock:
        freeze(network)
    if adapter == "lora":
        add_lora(network, options, where)
        if lock:
            network.eval()
    return network
