"""Frozen-feature extraction over a (possibly sharded) data loader.

Each rank runs the backbone over its own shard of the dataset. The shards must partition the
dataset without padding (torch's DistributedSampler pads by repeating samples; use a sampler
that does not, e.g. ``Subset(dataset, range(rank, len(dataset), world_size))``), so shard sizes
may differ by one. The features, labels and dataset indices are then all-gathered once each:

    sizes  = all_gather(n_local)                       (one small collective)
    padded = pad(x_local, to=max(sizes)); all_gather   (one collective per tensor)
    result = concat(trim(part_r, sizes[r]) for r), sorted by dataset index

so every rank returns exactly the single-process result, in dataset order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from hirl_like.data.bad_samples import BAD_KEY
from hirl_like.distributed import get_world_size, is_distributed


def _gather_uneven(x: Tensor, sizes: list[int], comm_device: torch.device) -> Tensor:
    """all_gather rows of tensors whose first dimension differs by rank; rank-major result."""
    max_n = max(sizes)
    padded = torch.zeros((max_n, *x.shape[1:]), dtype=x.dtype, device=comm_device)
    padded[: x.shape[0]] = x.to(comm_device)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).cpu()


def _check_batch(batch: Mapping, image_key: str) -> None:
    if not isinstance(batch, Mapping):
        raise ValueError(f"extract_features expects batches that are dicts, got {type(batch).__name__}.")
    bad = batch.get(BAD_KEY)
    if bad:
        # Training skips unreadable samples; an evaluation that did would score a different split.
        raise ValueError(
            f"the evaluation split has unreadable samples: {'; '.join(b.describe() for b in bad[:5])}"
            + (f" (+{len(bad) - 5} more in this batch)" if len(bad) > 5 else "")
            + ". Repair or remove them so every method is scored on the same images."
        )
    missing = [k for k in (image_key, "label", "index") if k not in batch]
    if missing:
        raise ValueError(
            f"batch is missing {missing}; it has {sorted(batch)}. The evaluation datasets must return "
            f"'{image_key}', 'label' and 'index' (the sample's position in the dataset)."
        )


@torch.no_grad()
def extract_features(
    forward: Callable[[Tensor], Tensor],
    loader: Iterable[dict],
    device: str | torch.device,
    image_key: str = "image",
    distributed: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ``forward`` over every batch and return (features (N, D) float32, labels (N,) int64).

    Args:
        forward: images (B, ...) on ``device`` -> features (B, D) (e.g. the backbone's CLS
            embedding; put the model in eval mode first).
        loader: yields dicts with ``image_key``, "label" (B,) and "index" (B,) = dataset index.
        device: where the images are sent.
        image_key: the batch key holding the images.
        distributed: gather across ranks; None means "when a process group with > 1 rank is
            initialised" (``hirl_like.distributed``).

    Returns:
        Both on the CPU, rows sorted by dataset index, identical on every rank. Raises
        ValueError if an index appears twice (a padding sampler) since that would bias metrics.
    """
    device = torch.device(device)
    if distributed is None:
        distributed = is_distributed() and get_world_size() > 1
    feats, labels, indices = [], [], []
    for batch in loader:
        _check_batch(batch, image_key)
        out = forward(batch[image_key].to(device, non_blocking=True))
        if out.ndim != 2:
            raise ValueError(
                f"forward must return (B, D) features, got shape {tuple(out.shape)}; pool or flatten first."
            )
        # CPU float32 accumulation: the full feature bank rarely fits on the accelerator next to the model.
        feats.append(out.detach().float().cpu())
        labels.append(torch.as_tensor(batch["label"]).long().cpu().view(-1))
        indices.append(torch.as_tensor(batch["index"]).long().cpu().view(-1))
        if not (feats[-1].shape[0] == labels[-1].numel() == indices[-1].numel()):
            raise ValueError(
                f"batch sizes disagree: {feats[-1].shape[0]} features, {labels[-1].numel()} labels, "
                f"{indices[-1].numel()} indices."
            )

    local_dim = feats[0].shape[1] if feats else -1
    features = torch.cat(feats) if feats else None
    label_t = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    index_t = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)

    if distributed and is_distributed() and get_world_size() > 1:
        # NCCL only moves CUDA tensors; gloo / mpi work on the CPU.
        comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
        meta = torch.tensor([label_t.numel(), local_dim], dtype=torch.long, device=comm_device)
        metas = [torch.empty_like(meta) for _ in range(get_world_size())]
        dist.all_gather(metas, meta)
        sizes = [int(m[0]) for m in metas]
        dims = {int(m[1]) for m in metas if int(m[0]) > 0}
        if len(dims) > 1:
            raise ValueError(f"ranks produced features of different dimensions {sorted(dims)}.")
        if sum(sizes) == 0:
            raise ValueError("the loader yielded no samples on any rank; nothing to extract.")
        dim = dims.pop()
        if features is None:  # a rank with an empty shard still joins every collective
            features = torch.zeros(0, dim)
        features = _gather_uneven(features, sizes, comm_device)
        label_t = _gather_uneven(label_t, sizes, comm_device)
        index_t = _gather_uneven(index_t, sizes, comm_device)
    elif features is None:
        raise ValueError("the loader yielded no batches; nothing to extract.")

    unique, counts = torch.unique(index_t, return_counts=True)
    if unique.numel() != index_t.numel():
        raise ValueError(
            f"{index_t.numel() - unique.numel()} dataset indices were seen more than once (e.g. "
            f"{unique[counts > 1][:5].tolist()}): the sampler pads or overlaps shards (torch's "
            "DistributedSampler pads). Use a sampler that partitions the dataset exactly."
        )
    order = torch.argsort(index_t)
    return features[order], label_t[order]


def has_tokens(model: torch.nn.Module) -> bool:
    """Whether ``model`` gives a token sequence (a ViT's ``forward_tokens``), not just a pooled feature (a CNN)."""
    return hasattr(model, "forward_tokens")


def token_features(model: torch.nn.Module, avgpool: bool = False) -> Callable[[Tensor], Tensor]:
    """Frozen features for the linear probe (DINO's ``eval_linear.py`` with n_last_blocks = 1).

    A ViT (``model.forward_tokens``): images (B, 3, H, W) -> CLS (B, D), or with ``avgpool``
    [CLS, mean of the patch tokens] (B, 2D), both read from the final (normalised) token
    sequence. Register tokens, when the ViT has any, are neither CLS nor patches and are left out
    of the mean.

    A CNN (no ``forward_tokens``, e.g. :class:`~hirl_like.models.resnet.ResNet`): its pooled
    feature ``model(images)`` (B, C), the global average pool of its last feature map, as the
    MoCo / SimSiam / SwAV linear protocols read a ResNet. ``avgpool`` is a ValueError there: the
    feature already is an average pool and there is no CLS token to put next to it, so the flag
    would either do nothing or double the feature; drop it.
    """
    if not has_tokens(model):
        if avgpool:
            raise ValueError(
                f"--avgpool concatenates a ViT's CLS token and its mean patch token, but {type(model).__name__} "
                "has no tokens: its feature already is the global average pool of its last feature map. "
                "Drop --avgpool (the probe then reads that pooled feature)."
            )
        return lambda images: model(images)
    prefix = int(getattr(model, "num_prefix_tokens", 1))

    def forward(images: Tensor) -> Tensor:
        tokens = model.forward_tokens(images)  # (B, prefix + N, D), index 0 = CLS
        cls = tokens[:, 0]
        if not avgpool:
            return cls
        return torch.cat([cls, tokens[:, prefix:].mean(dim=1)], dim=-1)

    return forward
