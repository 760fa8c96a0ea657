"""Pre-train a model: ``python3 launch.py --launch tools/train.py -c CONFIG [key=value ...]``.

Also runs as a plain process (``python tools/train.py -c CONFIG``). Re-running the same command
resumes from ``<output_dir>/checkpoint.pth``. A downstream config (``configs/downstream/...``, a
file with a top-level ``protocol`` key) runs that evaluation protocol instead, as HIRL's
``tools/train.py -c configs/downstream/... pretrained=PATH`` (:mod:`hirl_like.cli.downstream`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from hirl_like.cli.common import config_parser, console_entry, run_cleanly

import hirl_like  # noqa: F401  (registers every component)
from hirl_like.cli.downstream import downstream_command, is_downstream_config
from hirl_like.config import load_config
from hirl_like.data.pipe_urls import ALLOW_PIPE_URLS_FLAG, ALLOW_PIPE_URLS_HELP, allow_pipe_urls
from hirl_like.engine.dist_setup import cleanup_distributed, init_distributed
from hirl_like.engine.trainer import Trainer


def main(argv: Sequence[str] | None = None) -> int:
    parser = config_parser(__doc__)
    parser.add_argument(ALLOW_PIPE_URLS_FLAG, dest="allow_pipe_urls", action="store_true", help=ALLOW_PIPE_URLS_HELP)
    args = parser.parse_intermixed_args(argv)
    if args.allow_pipe_urls:
        allow_pipe_urls()  # the only way to let data.urls run a shell command; no config key sets it
    if is_downstream_config(args.config):
        protocol_main, protocol_argv = downstream_command(args.config, args.overrides)
        return protocol_main(protocol_argv)
    cfg = load_config(args.config, args.overrides)
    dist = init_distributed(device=str(cfg.device))
    try:
        summary = Trainer(cfg, dist).fit()
        if dist.rank == 0:
            final = summary["final"]
            terms = {k: v for k, v in final.items() if "/" not in k and k not in ("lr", "weight_decay", "grad_norm", "step_time", "ema_momentum")}
            print(f"done: {summary['iterations']} iterations in {summary['wall_time_s']} s; final {json.dumps(terms)}")
            print(f"outputs in {cfg.output_dir}")
    finally:
        cleanup_distributed()
    return 0


entry = console_entry(main)

if __name__ == "__main__":
    run_cleanly(main)
