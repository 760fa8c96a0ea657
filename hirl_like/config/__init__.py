"""Configs on OmegaConf: YAML files with ``_base_`` inheritance, typed ``key=value`` overrides,
strict keys, and one validation pass before anything is built.

One concept per module:

- :mod:`~hirl_like.config.safe_yaml`: YAML text -> plain values (safe loader, YAML 1.2 floats,
  duplicate keys refused, nothing a config cannot hold);
- :mod:`~hirl_like.config.loading`: defaults <- ``_base_`` chain <- file <- overrides, merged in
  struct mode, component nodes replaced on rename (explicit keys carried or refused);
- :mod:`~hirl_like.config.components`: component nodes against their registered constructors
  (argument names and types, constructor defaults);
- :mod:`~hirl_like.config.rules` and :mod:`~hirl_like.config.validation`: the table of what each
  value may be, and the pass that checks it;
- :mod:`~hirl_like.config.saving`: writing a config back out;
- :mod:`~hirl_like.config.typing_check`, :mod:`~hirl_like.config.errors`: type hints, messages.
"""

from hirl_like.config.components import constructor_defaults, validate_components, with_defaults
from hirl_like.config.errors import ConfigError
from hirl_like.config.loading import BASE_KEY, DEFAULTS_FILE, load_config, split_override
from hirl_like.config.safe_yaml import parse_value, read_yaml
from hirl_like.config.saving import dump_config, mark_new_keys, save_config, to_dict
from hirl_like.config.typing_check import NULLABLE_KEYS, NUMBER_KEYS
from hirl_like.config.validation import validate

__all__ = [
    "BASE_KEY", "DEFAULTS_FILE", "NULLABLE_KEYS", "NUMBER_KEYS", "ConfigError", "constructor_defaults", "dump_config",
    "load_config", "mark_new_keys", "parse_value", "read_yaml", "save_config", "split_override", "to_dict", "validate",
    "validate_components", "with_defaults",
]
