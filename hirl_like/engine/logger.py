"""Training logs on rank 0: JSON lines (``log.jsonl``), TensorBoard events, and console lines."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


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
