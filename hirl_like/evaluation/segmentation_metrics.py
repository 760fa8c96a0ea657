"""Semantic-segmentation metrics from one confusion matrix accumulated over a whole test set.

With ``M[t, p]`` = number of pixels of true class t predicted as p (summed over every image):

    TP_c = M[c, c],   FP_c = sum_t M[t, c] - TP_c,   FN_c = sum_p M[c, p] - TP_c
    IoU_c = TP_c / (TP_c + FP_c + FN_c)
    mIoU  = mean of IoU_c over the classes with TP_c + FP_c + FN_c > 0
            (present in the ground truth or in the prediction; classes absent from both are left out)
    pixel accuracy = sum_c TP_c / sum_{t,p} M[t, p]
"""

from __future__ import annotations

import torch
from torch import Tensor


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(C, C) int64 ``M[t, p]`` of integer label maps ``pred`` and ``target`` of any equal shape (values in 0..C-1)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    for name, t in (("prediction", pred), ("target", target)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"{name} holds class ids outside 0..{num_classes - 1}")
    return torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(confusion: Tensor) -> dict[str, float | list[float | None]]:
    """mIoU and pixel accuracy (in %) of a (C, C) confusion matrix, and each class's IoU (None if absent from both)."""
    m = confusion.double()
    tp = m.diagonal()
    union = m.sum(dim=0) + m.sum(dim=1) - tp  # TP + FP + FN
    valid = union > 0
    iou = torch.where(valid, tp / union.clamp_min(1), torch.zeros_like(tp))
    total = float(m.sum())
    return {
        "miou": 100.0 * float(iou[valid].mean()) if bool(valid.any()) else float("nan"),
        "pixel_acc": 100.0 * float(tp.sum()) / total if total else float("nan"),
        "per_class_iou": [100.0 * float(v) if ok else None for v, ok in zip(iou, valid)],
    }
