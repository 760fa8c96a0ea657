"""Print the fully resolved config: ``python tools/print_config.py -c FILE [--defaults] [key=value ...]``.

``--defaults`` also prints every component's constructor defaults (the arguments the config does
not set, with the value the constructor will use), each marked ``# default (COMPONENT)``, so that
the output shows everything that will run. Either output is a config file that loads back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from hirl_like.cli.common import config_parser, console_entry, run_cleanly
from hirl_like.config import DEFAULTS_FILE, dump_config, load_config, mark_new_keys, read_yaml, to_dict, with_defaults

HEADER = ("# Resolved config. Lines marked '# default (X)' are not set by the config: they are the defaults of\n"
          "# component X's constructor, shown so that you see everything that will run.\n")


def _flow(value: Any) -> str:
    """One YAML value on one line (a list or mapping in flow style)."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True, sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def render_with_marks(node: Mapping[str, Any], marks: Mapping[str, str], path: str = "", indent: int = 0) -> list[str]:
    """Block-style YAML lines of ``node``; a value whose dotted path (``+`` marks removed) is in
    ``marks`` ends with ``# default (COMPONENT)``."""
    lines = []
    for key, value in node.items():
        full = f"{path}.{key.removeprefix('+')}" if path else key.removeprefix("+")
        note = f"  # default ({marks[full]})" if full in marks else ""
        if isinstance(value, Mapping) and value:
            lines.append(f"{' ' * indent}{_flow(key)}:{note}")
            lines += render_with_marks(value, marks, full, indent + 2)
        else:
            lines.append(f"{' ' * indent}{_flow(key)}: {_flow(value)}{note}")
    return lines


def with_defaults_text(cfg: Mapping[str, Any]) -> str:
    """The resolved config completed with every component's constructor defaults, marked."""
    filled, marks = with_defaults(to_dict(cfg))
    return HEADER + "\n".join(render_with_marks(mark_new_keys(filled, read_yaml(DEFAULTS_FILE)), marks)) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = config_parser(__doc__)
    parser.add_argument("--defaults", action="store_true",
                        help="also print every component's constructor defaults, marked '# default (COMPONENT)'")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    print(with_defaults_text(cfg) if args.defaults else dump_config(cfg), end="")
    return 0


entry = console_entry(main)

if __name__ == "__main__":
    run_cleanly(main)
