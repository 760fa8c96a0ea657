"""Per-step seeds (masks, drop path) must be the same in every process, or restarts diverge."""

import os
import subprocess
import sys

from hirl_like.pipelines.step_cache import step_seed


def test_step_seed_is_independent_of_the_process_hash_salt():
    code = "from hirl_like.pipelines.step_cache import step_seed; print(step_seed(0, 5, 1), step_seed(3, 0, 0))"
    outputs = {
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": salt},
                       capture_output=True, text=True, check=True).stdout
        for salt in ("1", "2", "random")
    }
    assert outputs == {f"{step_seed(0, 5, 1)} {step_seed(3, 0, 0)}\n"}


def test_step_seeds_differ_and_fit_in_63_bits():
    seeds = {step_seed(s, i, r) for s in range(3) for i in range(50) for r in range(4)}
    assert len(seeds) == 3 * 50 * 4
    assert all(0 <= x < 2**63 for x in seeds)
