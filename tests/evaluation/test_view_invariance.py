"""view_invariance against a naive loop and analytic values; the tool on the digits configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hirl_like.evaluation.view_invariance import view_invariance

ROOT = Path(__file__).resolve().parents[2]


def test_matches_a_naive_loop():
    f = torch.randn(5, 7, 3, generator=torch.Generator().manual_seed(0))
    A, N, _ = f.shape
    means = [sum(f[a, n] for a in range(A)) / A for n in range(N)]
    grand = sum(means) / N
    between = sum(float((m - grand).pow(2).sum()) for m in means) / N
    within = sum(float((f[a, n] - means[n]).pow(2).sum()) for a in range(A) for n in range(N)) / (A * N)
    got = view_invariance(f)
    assert got.between == pytest.approx(between) and got.within == pytest.approx(within)
    assert got.ratio == pytest.approx(between / within)


def test_analytic_values():
    # two images at +-1 on one axis, each view shifted by +-0.5 on the other: between 1, within 0.25
    f = torch.tensor([[[1.0, 0.5], [-1.0, 0.5]], [[1.0, -0.5], [-1.0, -0.5]]])
    assert view_invariance(f) == (1.0, 0.25, 4.0)
    assert view_invariance(f[:, :, :1]).ratio == float("inf")  # views agree exactly
    with pytest.raises(ValueError, match="views >= 2"):
        view_invariance(f[:1])


def _ratio(config: str, *overrides: str) -> float:
    cmd = [sys.executable, "tools/view_invariance.py", "-c", config, "--images", "64", "--views", "4", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(proc.stdout.split("ratio ")[-1])


def test_digits_views_differ_less_than_digits_and_the_recipes_views_more():
    """The reason the digits quickstarts turn the recipe's views down (README, "Views on digits")."""
    assert _ratio("configs/quickstart/dino_vit_tiny_digits.yaml") > 1.5
    assert _ratio("configs/benchmark/harmony_vit_tiny_digits_multicrop.yaml") < 0.5


def test_a_crop_the_transform_does_not_make_is_a_clear_error():
    cmd = [sys.executable, "tools/view_invariance.py", "-c", "configs/quickstart/clip_vit_tiny_digits.yaml", "--crop", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no global crop 1" in proc.stderr, proc.stderr[-2000:]


def test_too_few_images_or_views_is_a_clear_error_before_any_work():
    from hirl_like.evaluation.view_invariance import backbone_view_features

    with pytest.raises(ValueError, match="at least 2 images and 2 views"):
        backbone_view_features(torch.nn.Identity(), object(), images=1, views=8)
