"""Image <-> text retrieval recall@k (CLIP / COCO / Flickr30k protocol).

Similarity is cosine. Image -> text: an image is a hit at k when ANY of its captions is among
the k texts most similar to it. Text -> image: a caption is a hit at k when its own image is
among the k images most similar to it.

Ranks count ties against the query: a wrong item whose similarity EQUALS the best correct one
is ranked above it. Constant or collapsed features therefore score ~0, never a spurious 100.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


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
    if image_features.ndim != 2 or text_features.ndim != 2 or image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"image_features (N, D) and text_features (M, D) must share D; got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}."
        )
    n, m = image_features.shape[0], text_features.shape[0]
    if text_to_image.shape != (m,):
        raise ValueError(
            f"text_to_image must be (M,) = ({m},), one image index per caption; got {tuple(text_to_image.shape)}."
        )
    if n == 0 or m == 0:
        raise ValueError("retrieval needs at least one image and one caption.")
    if text_to_image.min() < 0 or text_to_image.max() >= n:
        raise ValueError(f"text_to_image values must index images in [0, {n}).")
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}.")
    device = image_features.device
    t2i = text_to_image.to(device).long()
    captions_per_image = torch.bincount(t2i, minlength=n)
    if (captions_per_image == 0).any():
        missing = (captions_per_image == 0).nonzero(as_tuple=True)[0][:10].tolist()
        raise ValueError(
            f"{int((captions_per_image == 0).sum())} image(s) have no caption (e.g. indices {missing}); "
            "image->text recall is undefined for them. Drop those images or fix text_to_image."
        )

    img = F.normalize(image_features.float(), dim=1)
    txt = F.normalize(text_features.float(), dim=1).to(device)
    i2t_hits = dict.fromkeys(ks, 0)
    t2i_hits = dict.fromkeys(ks, 0)

    for start in range(0, n, batch_size):
        sims = img[start : start + batch_size] @ txt.T  # (b, M)
        ids = torch.arange(start, start + sims.shape[0], device=device)
        positive = t2i[None, :] == ids[:, None]  # (b, M)
        best_positive = sims.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
        # Texts ranked above the best caption are all negatives (it is the best positive).
        rank = ((sims >= best_positive) & ~positive).sum(dim=1)
        for k in ks:
            i2t_hits[k] += int((rank < k).sum())

    for start in range(0, m, batch_size):
        sims = txt[start : start + batch_size] @ img.T  # (b, N)
        target = t2i[start : start + sims.shape[0]]
        own = sims.gather(1, target[:, None])
        rank = (sims >= own).sum(dim=1) - 1  # minus the own image
        for k in ks:
            t2i_hits[k] += int((rank < k).sum())

    out = {f"i2t_r{k}": 100.0 * i2t_hits[k] / n for k in ks}
    out.update({f"t2i_r{k}": 100.0 * t2i_hits[k] / m for k in ks})
    return out
