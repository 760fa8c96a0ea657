"""Collapse indicators against naive references; the detector on collapsed and healthy models."""

from __future__ import annotations

import functools
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from hirl_like.evaluation.collapse import (
    BATCH_ENTROPY_MIN,
    CollapseDetector,
    effective_rank,
    embedding_indicators,
    embedding_std,
    target_entropy,
    target_entropy_terms,
)
from hirl_like.losses.dino import DINOLoss
from hirl_like.losses.distill_ce import teacher_probs
from hirl_like.losses.ibot import IBOTLoss


# -- references, by hand ----------------------------------------------------------------------
def entropy_loops(row: list[float]) -> float:
    return -sum(p * math.log(p) for p in row if p > 0)


def effective_rank_numpy(z: np.ndarray) -> float:
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = s / s.sum()
    p = p[p > 1e-12]
    return float(np.exp(-(p * np.log(p)).sum()))


def std_loops(z: np.ndarray) -> float:
    b, d = z.shape
    u = [[z[i, j] / math.sqrt(sum(z[i, k] ** 2 for k in range(d))) for j in range(d)] for i in range(b)]
    stds = []
    for j in range(d):
        column = [u[i][j] for i in range(b)]
        mean = sum(column) / b
        stds.append(math.sqrt(sum((c - mean) ** 2 for c in column) / (b - 1)))
    return sum(stds) / d


# -- target entropy ---------------------------------------------------------------------------
def test_target_entropy_matches_explicit_loops():
    torch.manual_seed(0)
    probs = torch.distributions.Dirichlet(torch.full((7,), 0.3)).sample((5,))
    probs[0] = torch.tensor([1.0, 0, 0, 0, 0, 0, 0])  # a row with zeros: 0 ln 0 = 0
    rows = probs.tolist()
    out = target_entropy(probs)
    entropy = sum(entropy_loops(r) for r in rows) / len(rows)
    mean_row = [sum(r[k] for r in rows) / len(rows) for k in range(7)]
    assert out["entropy"] == pytest.approx(entropy, rel=1e-9)
    assert out["entropy_ratio"] == pytest.approx(entropy / math.log(7), rel=1e-9)
    assert out["batch_entropy"] == pytest.approx(entropy_loops(mean_row), rel=1e-9)
    assert out["batch_entropy_ratio"] == pytest.approx(entropy_loops(mean_row) / math.log(7), rel=1e-9)
    terms = target_entropy_terms(probs)  # the tensor form the losses return
    assert float(terms["target_entropy"]) == pytest.approx(out["entropy"], rel=1e-5)
    assert float(terms["target_entropy_ratio"]) == pytest.approx(out["entropy_ratio"], rel=1e-5)
    assert float(terms["batch_target_entropy"]) == pytest.approx(out["batch_entropy"], rel=1e-5)


def test_target_entropy_of_the_two_collapses():
    k, b = 16, 8
    uniform = target_entropy(torch.full((b, k), 1.0 / k))
    assert uniform["entropy_ratio"] == pytest.approx(1.0) and uniform["batch_entropy_ratio"] == pytest.approx(1.0)
    same = torch.zeros(b, k)
    same[:, 3] = 1.0  # every sample on one prototype: dominant-dimension collapse
    one = target_entropy(same)
    assert one["entropy"] == 0.0 and one["batch_entropy"] == 0.0
    distinct = torch.eye(k)[:b]  # confident and spread: healthy
    spread = target_entropy(distinct)
    assert spread["entropy"] == 0.0 and spread["batch_entropy"] == pytest.approx(math.log(b))


# -- effective rank and std -------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(32, 8), (6, 20), (64, 64)])
def test_effective_rank_matches_numpy_svd(shape):
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) + 0.5
    assert effective_rank(z) == pytest.approx(effective_rank_numpy(z.numpy()), rel=1e-9)
    assert effective_rank(z * 37.0) == pytest.approx(effective_rank(z), rel=1e-9)  # scale-invariant


def test_effective_rank_bounds():
    assert effective_rank(torch.ones(16, 10) * torch.randn(10)) == pytest.approx(1.0)  # one direction
    assert effective_rank(torch.eye(12)[:5]) == pytest.approx(5.0)  # equal singular values: min(B, D)
    assert effective_rank(torch.zeros(4, 3)) == 0.0
    low = torch.randn(40, 3) @ torch.randn(3, 30)  # rank 3
    assert 1.0 < effective_rank(low) <= 3.0 + 1e-9


def test_embedding_std_matches_loops_and_its_scale():
    z = torch.randn(9, 5, generator=torch.Generator().manual_seed(2))
    assert embedding_std(z) == pytest.approx(std_loops(z.numpy().astype(np.float64)), rel=1e-9)
    assert embedding_std(torch.ones(8, 4) * torch.tensor([1.0, -2.0, 3.0, 0.5])) == pytest.approx(0.0, abs=1e-12)
    d = 256
    gaussian = torch.randn(2048, d, generator=torch.Generator().manual_seed(3))  # directions uniform on the sphere
    assert embedding_std(gaussian) * math.sqrt(d) == pytest.approx(1.0, rel=0.02)
    assert embedding_indicators(gaussian)["embedding_std_ratio"] == pytest.approx(1.0, rel=0.02)
    with pytest.raises(ValueError, match="B >= 2"):
        embedding_std(torch.ones(1, 4))


# -- the detector -----------------------------------------------------------------------------
def test_detector_warns_once_after_m_checks_in_a_row():
    stream = io.StringIO()
    detector = CollapseDetector(3, stream=stream)
    collapsed, healthy = {"effective_rank": 1.01, "embedding_std_ratio": 0.9}, {"effective_rank": 9.0}
    assert detector.update(collapsed) == [] and detector.update(collapsed) == []
    (warning,) = detector.update(collapsed, where="iteration 30")
    assert warning["indicator"] == "effective_rank" and warning["value"] == pytest.approx(1.01)
    line = stream.getvalue().strip()
    assert "\n" not in line and "effective_rank=1.01" in line and "iteration 30" in line and "lower optimizer.lr" in line
    assert detector.update(collapsed) == []  # once, until it recovers
    detector.update(healthy)
    assert [detector.update(collapsed) for _ in range(3)][-1][0]["indicator"] == "effective_rank"
    never = CollapseDetector(0, stream=stream)
    assert all(never.update(collapsed) == [] for _ in range(10))


def test_detector_reads_every_objectives_target_entropies():
    stream = io.StringIO()
    detector = CollapseDetector(1, stream=stream)
    warnings = detector.update({"dino/target_entropy_ratio": 0.995, "ibot/cls_batch_target_entropy": 0.01,
                                "clip/target_entropy": 0.0, "ibot/cls_target_entropy_ratio": 0.3})
    assert {w["indicator"] for w in warnings} == {"dino/target_entropy_ratio", "ibot/cls_batch_target_entropy"}
    assert "uniform collapse" in stream.getvalue() and "dominant-dimension collapse" in stream.getvalue()


class Constant(nn.Module):
    """A collapsed backbone: the same feature for every image."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.feature = nn.Parameter(torch.randn(dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature.expand(images.shape[0], -1) + 0.0 * images.mean()


@functools.lru_cache(maxsize=None)
def _digits(n: int = 64) -> torch.Tensor:
    from hirl_like.data.digits import DigitsDataset
    from hirl_like.data.transforms import EvalTransform

    data = DigitsDataset(split="train", image_size=32, transform=EvalTransform(size=32))
    return torch.stack([data[i]["image"] for i in range(n)])


def _random_resnet() -> nn.Module:
    from hirl_like.registry import MODELS

    torch.manual_seed(0)
    return MODELS.build({"name": "resnet", "arch": "resnet18"}).train()  # checked as training sees it (batch statistics)


def _healthy_models() -> list[tuple[str, nn.Module]]:
    from hirl_like.registry import MODELS

    torch.manual_seed(0)
    vit = MODELS.build({"name": "vit", "arch": "vit_tiny", "img_size": 32, "patch_size": 8, "depth": 1})
    return [("vit", vit.eval()), ("resnet", _random_resnet())]


def test_a_constant_backbone_is_flagged_and_random_inits_are_not():
    from hirl_like.engine.online_eval import student_indicators

    images = _digits()
    stream = io.StringIO()
    detector = CollapseDetector(2, stream=stream)
    for _ in range(2):
        record = student_indicators(Constant(), images)
        assert record["effective_rank"] == pytest.approx(1.0) and record["embedding_std"] == pytest.approx(0.0, abs=1e-9)
        warnings = detector.update(record)
    assert {w["indicator"] for w in warnings} == {"effective_rank", "embedding_std_ratio"}
    assert stream.getvalue().count("warning: collapse") == 2

    for name, model in _healthy_models():
        detector = CollapseDetector(1, stream=io.StringIO())
        record = student_indicators(model, images)
        assert detector.update(record) == [], (name, record)
        assert record["effective_rank"] > 3 and record["embedding_std_ratio"] > 0.12, (name, record)


def test_indicators_leave_batchnorm_statistics_as_they_were():
    from hirl_like.engine.online_eval import student_indicators

    resnet = _random_resnet()
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    student_indicators(resnet, _digits(16))
    after = resnet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- the losses report them -------------------------------------------------------------------
def test_dino_and_ibot_losses_report_their_target_entropies():
    k, b = 64, 6
    gen = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(2 * b, k, generator=gen), torch.randn(2 * b, k, generator=gen)
    dino = DINOLoss(k, 2, 0)
    dino.center.normal_(generator=gen)
    expected = target_entropy(teacher_probs(teacher, dino.center.clone(), 0.04))  # the centre before the update
    out = dino(student, teacher, 0.04)
    assert float(out["target_entropy"]) == pytest.approx(expected["entropy"], rel=1e-5)
    assert float(out["target_entropy_ratio"]) == pytest.approx(expected["entropy_ratio"], rel=1e-5)
    assert float(out["batch_target_entropy"]) == pytest.approx(expected["batch_entropy"], rel=1e-5)

    ibot = IBOTLoss(k, k, 2, 0)
    n = 4
    patch = torch.randn(2 * b, n, k, generator=gen)
    masks = torch.rand(2 * b, n, generator=gen) > 0.5
    out = ibot(student, patch, teacher, patch.clone(), masks, 0.04, 0.04)
    expected = target_entropy(teacher_probs(teacher, torch.zeros(1, k), 0.04))
    assert float(out["cls_target_entropy_ratio"]) == pytest.approx(expected["entropy_ratio"], rel=1e-5)
    assert float(out["cls_batch_target_entropy"]) == pytest.approx(expected["batch_entropy"], rel=1e-5)


def test_collapsed_teachers_are_flagged_through_the_loss_diagnostics():
    k, b = 64, 8
    student = torch.randn(2 * b, k)
    uniform = DINOLoss(k, 2, 0)(student, torch.zeros(2 * b, k), 0.04)  # equal logits: uniform targets
    peaked = torch.zeros(2 * b, k)
    peaked[:, 5] = 10.0  # every sample on prototype 5
    dominant = DINOLoss(k, 2, 0)(student, peaked, 0.04)
    assert float(uniform["target_entropy_ratio"]) == pytest.approx(1.0)
    assert float(dominant["batch_target_entropy"]) < BATCH_ENTROPY_MIN
    detector = CollapseDetector(1, stream=io.StringIO())
    flagged = detector.update({f"dino/{key}": float(v) for key, v in uniform.items() if key != "loss"})
    flagged += detector.update({f"dino_b/{key}": float(v) for key, v in dominant.items() if key != "loss"})
    assert {w["indicator"] for w in flagged} == {"dino/target_entropy_ratio", "dino_b/batch_target_entropy"}
