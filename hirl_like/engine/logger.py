"""Training logs on rank 0: JSON lines (``log.jsonl``), TensorBoard events, and console lines
(a progress bar on a terminal, a plain line every ``log_interval`` iterations in a redirected log)."""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, TextIO


class RunningMeans:
    """Mean of every named scalar since the last reset (one log window)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def update(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            if math.isfinite(value):
                self.sums[key] += value
                self.counts[key] += 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k]}

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()


class TrainLogger:
    """Writes one JSON object per line to ``<output_dir>/log.jsonl`` and mirrors scalars to TensorBoard.

    A no-op on ranks other than 0.
    """

    def __init__(self, output_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "log.jsonl"
        self.writer = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if self.writer is not None and step is not None:
            prefix = record.get("type", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("time", "iteration", "epoch"):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ProgressBar:
    """The console progress of a run, written to ``stream`` (stderr, as tqdm writes).

    On a terminal: a tqdm bar, redrawn at most every ``mininterval`` seconds (the postfix is set
    without forcing a redraw, so it does not cost a line per iteration). Anywhere else (a file, a
    pipe, a cluster log) a bar is redrawn as a new line each time, so instead one plain line is
    printed every ``log_interval`` iterations and at the last one, e.g.
    ``train:  50% 60/121 [00:30<00:30,  1.99it/s, loss=1.2345, epoch=0.50]``: a redirected run of
    N iterations prints about N / log_interval lines.

    Args:
        total: iterations of the whole run; initial: those already done (a resumed run).
        log_interval: iterations between plain lines (the config's ``log_interval``).
        desc: the prefix; stream: where to write (default ``sys.stderr``);
        terminal: force one mode (default: ``stream.isatty()``).
    """

    def __init__(
        self,
        total: int,
        initial: int = 0,
        log_interval: int = 10,
        desc: str = "train",
        stream: TextIO | None = None,
        terminal: bool | None = None,
        mininterval: float = 0.5,
    ) -> None:
        if not isinstance(log_interval, int) or log_interval < 1:
            raise ValueError(f"log_interval must be a positive int (iterations), got {log_interval!r}")
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = is_terminal(self.stream) if terminal is None else bool(terminal)
        self.total, self.initial, self.n = int(total), int(initial), int(initial)
        self.log_interval, self.desc = log_interval, desc
        self.postfix: dict[str, Any] = {}
        self._start = time.time()
        self._bar = None
        if self.terminal:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, initial=self.initial, desc=desc, dynamic_ncols=True, file=self.stream, mininterval=mininterval
            )

    def update(self, postfix: dict[str, Any] | None = None) -> None:
        """One iteration done; ``postfix`` (e.g. ``{"loss": "1.2345"}``) replaces the shown values
        (None keeps the previous ones)."""
        self.n += 1
        if postfix is not None:
            self.postfix = dict(postfix)
        if self._bar is not None:
            if postfix is not None:
                self._bar.set_postfix(self.postfix, refresh=False)
            self._bar.update(1)
            return
        if self.n % self.log_interval == 0 or self.n == self.total:
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        """The plain progress line for the current state."""
        from tqdm import tqdm

        postfix = ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        return tqdm.format_meter(
            self.n, self.total, time.time() - self._start, ncols=0, prefix=self.desc, postfix=postfix or None,
            initial=self.initial,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
