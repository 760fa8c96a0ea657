"""Activation checkpointing per transformer block (``grad_checkpointing``, issue 18): the same loss
and gradients as without it, on every ViT path and both text attention modes, and fewer tensors
kept for the backward pass."""

from __future__ import annotations

import pytest
import torch

from hirl_like.data.tokenizer import ClipTokenizer
from hirl_like.models.text import TextTransformer
from hirl_like.models.vit import VisionTransformer
from hirl_like.registry import MODELS


def vit(checkpointing: bool, drop_path: float = 0.0) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer("vit_tiny", img_size=32, patch_size=8, depth=3, embed_dim=32, num_heads=2,
                             mask_token=True, drop_path_rate=drop_path, grad_checkpointing=checkpointing).train()


def text(checkpointing: bool, causal: bool) -> TextTransformer:
    torch.manual_seed(0)
    return TextTransformer(context_length=16, width=32, layers=3, heads=4, embed_dim=16, causal=causal,
                           grad_checkpointing=checkpointing).train()


def saved_bytes(fn) -> tuple[torch.Tensor, int]:
    """(fn(), bytes of the tensors autograd keeps for the backward pass while fn runs)."""
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def grads_of(model: torch.nn.Module, loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    torch.manual_seed(123)  # drop path draws from the global RNG
    loss, saved = saved_bytes(lambda: loss_fn(model))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, saved


def assert_same(a, b) -> None:
    torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=1e-6)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], atol=1e-6, rtol=1e-5, msg=name)


IMAGES = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
MASK = torch.rand(4, 16, generator=torch.Generator().manual_seed(1)) < 0.4
KEEP = torch.argsort(torch.rand(4, 16, generator=torch.Generator().manual_seed(2)), dim=1)[:, :4]
VIT_PATHS = {
    "plain": lambda m: m.forward_tokens(IMAGES).pow(2).mean(),
    "ibot_mask": lambda m: m.forward_tokens(IMAGES, mask=MASK).pow(2).mean(),
    "mae_keep": lambda m: m.forward_tokens(IMAGES, ids_keep=KEEP).pow(2).mean(),
    "local_crop": lambda m: m.forward_tokens(IMAGES[:, :, :16, :16]).pow(2).mean(),
}


@pytest.mark.parametrize("path", list(VIT_PATHS))
@pytest.mark.parametrize("drop_path", [0.0, 0.3], ids=["no_drop_path", "drop_path"])
def test_vit_same_loss_and_gradients(path, drop_path):
    plain = grads_of(vit(False, drop_path), VIT_PATHS[path])
    checkpointed = grads_of(vit(True, drop_path), VIT_PATHS[path])
    assert_same(plain, checkpointed)
    assert checkpointed[2] < plain[2] / 2  # the blocks' activations are not kept


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_text_same_loss_and_gradients(causal):
    tokens = ClipTokenizer(context_length=16, pad_to="batch")(["a photo of the number seven.", "two", "a dog"])

    def loss(m):
        return m(tokens).pow(2).sum() + m.forward_tokens(tokens, causal=not causal).pow(2).mean()

    plain = grads_of(text(False, causal), loss)
    checkpointed = grads_of(text(True, causal), loss)
    assert_same(plain, checkpointed)
    assert checkpointed[2] < plain[2] / 2


def test_no_checkpointing_without_grad_and_teachers_run_as_usual():
    model = vit(True)
    calls = []
    import hirl_like.models.vit as vit_module

    original = vit_module.checkpoint
    vit_module.checkpoint = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with torch.no_grad():
            out = model(IMAGES)
        assert not calls and out.shape == (4, 32)
        model.forward_tokens(IMAGES).sum().backward()
        assert len(calls) == 3  # one per block
    finally:
        vit_module.checkpoint = original


def test_config_key_builds_both_towers():
    v = MODELS.build({"name": "vit", "arch": "vit_tiny", "img_size": 32, "patch_size": 8, "depth": 1,
                      "grad_checkpointing": True})
    t = MODELS.build({"name": "text_transformer", "width": 32, "layers": 1, "heads": 2, "context_length": 8,
                      "grad_checkpointing": True})
    assert v.grad_checkpointing and t.grad_checkpointing
    assert not MODELS.build({"name": "vit", "arch": "vit_tiny", "img_size": 32, "patch_size": 8, "depth": 1}).grad_checkpointing
    assert "grad_checkpointing" not in v.timm_kwargs  # the export still loads into timm.create_model
