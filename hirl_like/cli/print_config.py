"""Print the fully resolved config: ``python tools/print_config.py -c FILE [key=value ...]``."""

from __future__ import annotations

from collections.abc import Sequence

from hirl_like.cli.common import config_parser, console_entry, run_cleanly

from hirl_like.config import dump_config, load_config


def main(argv: Sequence[str] | None = None) -> int:
    args = config_parser(__doc__).parse_args(argv)
    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


entry = console_entry(main)

if __name__ == "__main__":
    run_cleanly(main)
