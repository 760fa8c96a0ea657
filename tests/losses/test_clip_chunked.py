"""Chunked contrastive losses (``chunk_size``, issue 18): logits computed in checkpointed row blocks
give the same loss, the same reported terms and the same gradients as the unchunked loss, for CLIP
and SigLIP, hard and soft targets, on one process and on a 2-process gloo group; and the backward
pass keeps far less than the (B, N) logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hirl_like.losses.clip import ClipLoss
from hirl_like.losses.siglip import SigLipLoss
from tests.losses._two_ranks import ranks_and_single
from tests.losses.test_clip import naive_clip

B, D = 10, 6


def unit(b: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(b, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def run(loss: torch.nn.Module, teachers: bool, siglip: bool, hard_weight: float = 0.3, b: int = B):
    """(outputs, gradients w.r.t. image, text, scale[, bias]) of one loss call on fixed inputs."""
    img, txt = unit(b, D, 0).requires_grad_(), unit(b, D, 1).requires_grad_()
    scale = torch.tensor(7.0, requires_grad=True)
    leaves = [img, txt, scale]
    args = [img, txt, scale]
    if siglip:
        bias = torch.tensor(-4.0, requires_grad=True)
        leaves.append(bias)
        args.append(bias)
    kwargs = {"hard_weight": hard_weight if teachers else 1.0}
    if teachers:
        kwargs.update(teacher_image_features=unit(b, 5, 2), teacher_text_features=unit(b, 5, 3))
    out = loss(*args, **kwargs)
    return out, torch.autograd.grad(out["loss"], leaves)


def assert_equal_runs(a, b) -> None:
    assert a[0].keys() == b[0].keys()
    for key in a[0]:
        torch.testing.assert_close(a[0][key], b[0][key], atol=1e-5, rtol=1e-5, msg=key)
    for ga, gb in zip(a[1], b[1]):
        torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-5)


LOSSES = {"clip": ClipLoss, "siglip": SigLipLoss}


@pytest.mark.parametrize("kind", list(LOSSES))
@pytest.mark.parametrize("teachers", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("chunk", [1, 3, 4, 9, 10, 64])
def test_chunked_equals_unchunked(kind, teachers, chunk):
    siglip = kind == "siglip"
    reference = run(LOSSES[kind](soft_temperature=0.2), teachers, siglip)
    chunked = run(LOSSES[kind](soft_temperature=0.2, chunk_size=chunk), teachers, siglip)
    assert_equal_runs(reference, chunked)


@pytest.mark.parametrize("hard_weight", [0.0, 1.0])
def test_chunked_soft_clip_matches_the_naive_formula(hard_weight):
    img, txt = unit(6, 4, 4).requires_grad_(), unit(6, 4, 5).requires_grad_()
    t_img, t_txt = unit(6, 4, 6), unit(6, 4, 7)
    s = torch.tensor(5.0)
    out = ClipLoss(chunk_size=4)(img, txt, s, hard_weight=hard_weight, teacher_image_features=t_img,
                                 teacher_text_features=t_txt)
    ref, ref_soft = naive_clip(img, txt, s, hard_weight, t_img, t_txt)
    torch.testing.assert_close(out["loss"], ref.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["soft"], ref_soft.detach().float(), rtol=1e-5, atol=1e-6)
    for g, r in zip(torch.autograd.grad(out["loss"], (img, txt)), torch.autograd.grad(ref, (img, txt))):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def saved_bytes_of(loss: torch.nn.Module, b: int) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass (a tensor kept by several
    blocks, such as the gathered columns, counts once: it is one allocation)."""
    kept: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(loss, True, isinstance(loss, SigLipLoss), b=b)[0]["loss"]
    return sum(kept.values())


@pytest.mark.parametrize("kind", list(LOSSES))
def test_chunked_backward_keeps_no_logit_matrix(kind):
    b = 256
    full = saved_bytes_of(LOSSES[kind](), b)
    chunked = saved_bytes_of(LOSSES[kind](chunk_size=16), b)
    assert full > 4 * b * b  # at least one float32 (B, B) matrix is kept without chunking
    assert chunked < full / 8  # with chunks: the inputs and per-block scalars only


def test_without_grad_the_chunked_loss_still_matches():
    with torch.no_grad():
        a = ClipLoss()(unit(B, D, 0), unit(B, D, 1), torch.tensor(3.0))
        b = ClipLoss(chunk_size=3)(unit(B, D, 0), unit(B, D, 1), torch.tensor(3.0))
    torch.testing.assert_close(a["loss"], b["loss"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_bad_chunk_size_is_refused(bad):
    for cls in LOSSES.values():
        with pytest.raises(ValueError, match="chunk_size"):
            cls(chunk_size=bad)


# -- 2 ranks: rows of one rank against the gathered columns, labels offset by rank -----------------
WORLD, ROWS = 2, 5


def _inputs() -> dict[str, torch.Tensor]:
    return {"img": unit(WORLD * ROWS, D, 0), "txt": unit(WORLD * ROWS, D, 1),
            "t_img": unit(WORLD * ROWS, D, 2), "t_txt": unit(WORLD * ROWS, D, 3)}


def _compute(x: dict[str, torch.Tensor], lo: int, hi: int) -> dict[str, torch.Tensor]:
    res = {}
    for name, cls in LOSSES.items():
        for chunk in (None, 2):
            img, txt = x["img"][lo:hi].clone().requires_grad_(), x["txt"][lo:hi].clone().requires_grad_()
            s = torch.tensor(6.0, requires_grad=True)
            args = (img, txt, s) + ((torch.tensor(-3.0),) if name == "siglip" else ())
            out = cls(chunk_size=chunk)(*args, 0.3, x["t_img"][lo:hi], x["t_txt"][lo:hi])
            out["loss"].backward()
            tag = f"{name}_{chunk}"
            res.update({f"{tag}_loss": out["loss"].detach(), f"{tag}_soft": out["soft"], f"{tag}_gimg": img.grad,
                        f"{tag}_gtxt": txt.grad, f"{tag}_gs": s.grad})
    return {k: v.detach().clone() for k, v in res.items()}


def test_two_ranks_chunked_equals_unchunked_and_one_process(tmp_path):
    ranks, single = ranks_and_single(_compute, _inputs, ROWS, WORLD, tmp_path)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731
    for name in LOSSES:
        for part in ("loss", "soft", "gimg", "gtxt", "gs"):
            for res in (*ranks, single):
                close(res[f"{name}_2_{part}"], res[f"{name}_None_{part}"])
        close(torch.stack([r[f"{name}_2_loss"] for r in ranks]).mean(), single[f"{name}_2_loss"])
        close(torch.cat([r[f"{name}_2_gimg"] for r in ranks]), WORLD * single[f"{name}_2_gimg"])
