"""The data a recipe was tuned on, and the warning a run on other data gets.

A quickstart's views and budget are tuned for the embedded 8x8 digits; some methods then need
more iterations or other views on a new data set before they beat the same network at random
init (configs/compare/quickstarts_fashion_mnist.yaml measures every quickstart on Fashion-MNIST).
Such a config says so in its ``tuned_on`` node::

    tuned_on:
      data: Digits
      advice: "on other data use transform.hflip=0.5 ... (k-NN 61.8 vs 62.6 at random init without)"

and a run whose ``data.name`` differs prints the advice once on stderr before training.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any


def off_tuned_data_warning(cfg: Mapping[str, Any]) -> str | None:
    """The warning line for a run on other data than ``tuned_on.data`` (case-insensitive), or None
    when the config names no tuned data or the run reads that data."""
    tuned = cfg.get("tuned_on") or {}
    tuned_data = tuned.get("data")
    data_name = (cfg.get("data") or {}).get("name")
    if not tuned_data or not data_name or str(data_name).casefold() == str(tuned_data).casefold():
        return None
    advice = tuned.get("advice")
    return (f"warning: this recipe was tuned on {tuned_data}, and this run reads {data_name}"
            + (f": {advice}" if advice else "; its views and budget may not fit the new data."))


def warn_if_off_tuned_data(cfg: Mapping[str, Any]) -> None:
    """Print :func:`off_tuned_data_warning` on stderr when there is one."""
    line = off_tuned_data_warning(cfg)
    if line is not None:
        print(line, file=sys.stderr, flush=True)
