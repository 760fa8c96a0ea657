import logging
import math

import pytest
import torch

from hirl_like.evaluation.knn import knn_classify, topk_hits


def _reference_knn(train, train_labels, test, test_labels, num_classes, k, temperature):
    """Explicit loops over test points, neighbours and classes (DINO's formula, ties against the target)."""
    train = [row / row.norm() for row in train.double()]
    test = [row / row.norm() for row in test.double()]
    top1 = top5 = 0
    for q, y in zip(test, test_labels.tolist()):
        sims = [(float(q @ t), j) for j, t in enumerate(train)]
        sims.sort(key=lambda s: -s[0])
        scores = [0.0] * num_classes
        for s, j in sims[: min(k, len(train))]:
            scores[int(train_labels[j])] += math.exp(s / temperature)
        rank = sum(1 for c in range(num_classes) if c != y and scores[c] >= scores[y])
        top1 += rank < 1
        top5 += rank < min(5, num_classes)
    return {"top1": 100.0 * top1 / len(test), "top5": 100.0 * top5 / len(test)}


def _data(seed=0, n=120, m=40, d=12, c=7):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g)
    ytr = torch.randint(0, c, (n,), generator=g)
    yte = torch.randint(0, c, (m,), generator=g)
    xtr = centers[ytr] + 1.5 * torch.randn(n, d, generator=g)
    xte = centers[yte] + 1.5 * torch.randn(m, d, generator=g)
    return xtr, ytr, xte, yte, c


@pytest.mark.parametrize("use_faiss", [True, False])
def test_matches_bruteforce_reference(use_faiss):
    xtr, ytr, xte, yte, c = _data()
    ks = (1, 5, 10, 20)
    out = knn_classify(xtr, ytr, xte, yte, c, ks=ks, use_faiss=use_faiss, batch_size=16)
    assert set(out) == set(ks)
    for k in ks:
        ref = _reference_knn(xtr, ytr, xte, yte, c, k, 0.07)
        assert out[k]["top1"] == pytest.approx(ref["top1"], abs=1e-9)
        assert out[k]["top5"] == pytest.approx(ref["top5"], abs=1e-9)
    # Not a degenerate case: the accuracies are neither 0 nor 100.
    assert 0 < out[10]["top1"] < 100


def test_faiss_and_torch_agree():
    xtr, ytr, xte, yte, c = _data(seed=3, n=300, m=90)
    a = knn_classify(xtr, ytr, xte, yte, c, ks=(10, 20, 100, 200), use_faiss=True)
    b = knn_classify(xtr, ytr, xte, yte, c, ks=(10, 20, 100, 200), use_faiss=False, batch_size=7)
    assert a == b


def _two_direction_vec(cos):
    return torch.tensor([cos, math.sqrt(1 - cos**2)])


def test_temperature_weighting_changes_the_vote():
    # One class-0 neighbour very close (cos 0.99), two class-1 neighbours far (cos 0.5).
    train = torch.stack(
        [_two_direction_vec(0.99), torch.tensor([0.5, math.sqrt(0.75)]), torch.tensor([0.5, -math.sqrt(0.75)])]
    )
    labels = torch.tensor([0, 1, 1])
    query, qlabel = torch.tensor([[3.0, 0.0]]), torch.tensor([0])  # unnormalised on purpose
    sharp = knn_classify(train, labels, query, qlabel, num_classes=2, ks=(3,), temperature=0.07)
    # exp(0.99/0.07) = 1.4e6 > 2 exp(0.5/0.07) = 2.5e3: the close neighbour wins.
    assert sharp[3]["top1"] == 100.0
    # A huge temperature makes every vote ~1: two class-1 votes beat one class-0 vote.
    flat = knn_classify(train, labels, query, qlabel, num_classes=2, ks=(3,), temperature=1e4)
    assert flat[3]["top1"] == 0.0
    # Top-5 is capped at the 2 classes, hence always 100 here.
    assert flat[3]["top5"] == 100.0


def test_k_larger_than_bank_is_clamped_and_logged(caplog):
    xtr, ytr, xte, yte, c = _data(n=30)
    with caplog.at_level(logging.WARNING, logger="hirl_like.evaluation.knn"):
        out = knn_classify(xtr, ytr, xte, yte, c, ks=(30, 200))
    assert "exceeds" in caplog.text
    assert out[200] == out[30]


def test_topk_hits_ties_count_against_target():
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    targets = torch.tensor([0, 2])
    # Row 0: class 1 ties the target -> rank 1. Row 1: class 1 above -> rank 1.
    assert topk_hits(scores, targets, (1, 2, 3)) == {1: 0, 2: 2, 3: 2}


def test_invalid_arguments():
    xtr, ytr, xte, yte, c = _data()
    with pytest.raises(ValueError, match="num_classes"):
        knn_classify(xtr, ytr, xte, yte, num_classes=3)
    with pytest.raises(ValueError, match="dims differ"):
        knn_classify(xtr, ytr, xte[:, :5], yte, c)
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(xtr, ytr, xte, yte, c, temperature=0.0)
