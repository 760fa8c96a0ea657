"""mIoU and pixel accuracy of the dense probe against a naive per-class count."""

from __future__ import annotations

import math

import pytest
import torch

from hirl_like.evaluation.segmentation_metrics import confusion_matrix, segmentation_scores

C = 5  # 0 background, 1 and 2 in both, 3 absent from both, 4 only predicted


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 4x4 label maps each (N=2): prediction and target."""
    target = torch.tensor([
        [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]],
        [[1, 1, 1, 0], [0, 0, 0, 0], [0, 2, 2, 0], [0, 0, 0, 0]],
    ])
    pred = torch.tensor([
        [[0, 1, 1, 1], [0, 0, 1, 0], [2, 4, 0, 0], [2, 2, 0, 4]],
        [[1, 1, 0, 0], [0, 0, 4, 0], [0, 2, 0, 0], [2, 0, 0, 0]],
    ])
    return pred, target


def _naive(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float, list[float | None]]:
    ious: list[float | None] = []
    for c in range(C):
        inter = int(((pred == c) & (target == c)).sum())
        union = int(((pred == c) | (target == c)).sum())
        ious.append(None if union == 0 else 100.0 * inter / union)
    present = [v for v in ious if v is not None]
    return sum(present) / len(present), 100.0 * float((pred == target).float().mean()), ious


def test_scores_equal_a_naive_per_class_loop():
    pred, target = _pair()
    scores = segmentation_scores(confusion_matrix(pred, target, C))
    miou, acc, ious = _naive(pred, target)
    assert scores["miou"] == pytest.approx(miou)
    assert scores["pixel_acc"] == pytest.approx(acc)
    assert scores["per_class_iou"][3] is None  # absent from both: left out of the mean
    assert scores["per_class_iou"][4] == pytest.approx(0.0)  # only predicted: IoU 0, counted
    assert scores["per_class_iou"] == pytest.approx(ious)
    assert ious[1] is not None and 0 < ious[1] < 100  # the pair is not trivial


def test_confusion_accumulates_over_images_not_a_mean_of_per_image_scores():
    pred, target = _pair()
    summed = confusion_matrix(pred[:1], target[:1], C) + confusion_matrix(pred[1:], target[1:], C)
    assert torch.equal(summed, confusion_matrix(pred, target, C))
    per_image = [segmentation_scores(confusion_matrix(pred[i], target[i], C))["miou"] for i in range(2)]
    assert segmentation_scores(summed)["miou"] != pytest.approx(sum(per_image) / 2)


def test_bad_input_is_refused():
    pred, target = _pair()
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(pred[:1], target, C)
    with pytest.raises(ValueError, match="outside 0..4"):
        confusion_matrix(pred + 1, target, C)
    assert math.isnan(segmentation_scores(torch.zeros(C, C, dtype=torch.long))["miou"])
