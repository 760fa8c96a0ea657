"""Image <-> text retrieval recall@k (CLIP / COCO / Flickr30k protocol).

Similarity is cosine. Image -> text: an image is a hit at k when ANY of its captions is among
the k texts most similar to it. Text -> image: a caption is a hit at k when its own image is
among the k images most similar to it.

Ranks count ties against the query: a wrong item whose similarity EQUALS the best correct one
is ranked above it. Constant or collapsed features therefore score ~0, never a spurious 100.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_features(image_features: Tensor, text_features: Tensor) -> None:
    if image_features.ndim != 2 or text_features.ndim != 2 or image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"image_features (N, D) and text_features (M, D) must share D; got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}."
        )
    if image_features.shape[0] == 0 or text_features.shape[0] == 0:
        raise ValueError("retrieval needs at least one image and one caption.")


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}.")
    return ks


@torch.no_grad()
def retrieval_recall(
    image_features: Tensor,
    text_features: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 1024,
) -> dict[str, float]:
    """Recall@k in % for both directions.

    Args:
        image_features: (N, D).
        text_features: (M, D), M >= N (several captions per image allowed).
        text_to_image: (M,) int, index in [0, N) of the image caption j describes. Every image
            needs at least one caption.
        ks: the k of recall@k.
        batch_size: query rows per similarity chunk (memory ~ batch_size x max(N, M)).

    Returns:
        {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"} (keys follow ``ks``).
    """
    _check_features(image_features, text_features)
    n, m = image_features.shape[0], text_features.shape[0]
    if text_to_image.shape != (m,):
        raise ValueError(
            f"text_to_image must be (M,) = ({m},), one image index per caption; got {tuple(text_to_image.shape)}."
        )
    if text_to_image.min() < 0 or text_to_image.max() >= n:
        raise ValueError(f"text_to_image values must index images in [0, {n}).")
    ks = _check_ks(ks)
    device = image_features.device
    t2i = text_to_image.to(device).long()
    captions_per_image = torch.bincount(t2i, minlength=n)
    if (captions_per_image == 0).any():
        missing = (captions_per_image == 0).nonzero(as_tuple=True)[0][:10].tolist()
        raise ValueError(
            f"{int((captions_per_image == 0).sum())} image(s) have no caption (e.g. indices {missing}); "
            "image->text recall is undefined for them. Drop those images or fix text_to_image."
        )

    images = torch.arange(n, device=device)
    # Image i's positives are its captions; caption j's only positive is its own image.
    i2t = _recall_at_k(image_features, text_features, lambda rows: t2i[None, :] == rows[:, None], ks, batch_size)
    t2i_recall = _recall_at_k(text_features, image_features, lambda rows: images[None, :] == t2i[rows, None], ks, batch_size)
    out = {f"i2t_r{k}": i2t[k] for k in ks}
    out.update({f"t2i_r{k}": t2i_recall[k] for k in ks})
    return out


@torch.no_grad()
def class_retrieval_recall(
    image_features: Tensor,
    image_labels: Tensor,
    text_features: Tensor,
    text_labels: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 1024,
) -> dict[str, float]:
    """Category-level recall@k in %: a retrieved item is correct when it has the query's class.

    For captions written from class templates, many images share one caption, so instance recall
    (:func:`retrieval_recall`) is bounded by the ties; this asks instead whether the k nearest
    texts (images) include one of the image's (caption's) class. Ties count against the query.

    Args:
        image_features: (N, D); image_labels: (N,) int.
        text_features: (M, D); text_labels: (M,) int, the class each caption names.
    Returns:
        the keys of :func:`retrieval_recall`.
    """
    _check_features(image_features, text_features)
    if image_labels.shape != (image_features.shape[0],) or text_labels.shape != (text_features.shape[0],):
        raise ValueError(
            f"need one label per image and per caption; got {tuple(image_labels.shape)} labels for "
            f"{image_features.shape[0]} images and {tuple(text_labels.shape)} for {text_features.shape[0]} captions."
        )
    ks = _check_ks(ks)
    device = image_features.device
    image_labels, text_labels = image_labels.to(device), text_labels.to(device)
    i2t = _recall_at_k(
        image_features, text_features, lambda rows: text_labels[None, :] == image_labels[rows, None], ks, batch_size
    )
    t2i = _recall_at_k(
        text_features, image_features, lambda rows: image_labels[None, :] == text_labels[rows, None], ks, batch_size
    )
    out = {f"i2t_r{k}": i2t[k] for k in ks}
    out.update({f"t2i_r{k}": t2i[k] for k in ks})
    return out


def _recall_at_k(
    queries: Tensor, keys: Tensor, positives: Callable[[Tensor], Tensor], ks: list[int], batch_size: int
) -> dict[int, float]:
    """% of queries with a positive key among their k most cosine-similar keys.

    ``positives(rows)`` gives the (b, K) bool mask of the keys that answer the queries ``rows``.
    The rank of a query is the number of negative keys at least as similar as its best positive, so
    a negative tied with the best positive ranks above it. A query without positive is a miss.
    """
    q = F.normalize(queries.float(), dim=1)
    k_ = F.normalize(keys.float(), dim=1).to(q.device)
    hits = dict.fromkeys(ks, 0)
    for start in range(0, q.shape[0], batch_size):
        rows = torch.arange(start, min(start + batch_size, q.shape[0]), device=q.device)
        sims = q[rows] @ k_.T  # (b, K)
        positive = positives(rows)
        best_positive = sims.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
        rank = ((sims >= best_positive) & ~positive).sum(dim=1)
        for k in ks:
            hits[k] += int((rank < k).sum())
    return {k: 100.0 * hits[k] / q.shape[0] for k in ks}
