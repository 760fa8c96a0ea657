"""Every language-supervised method gives the same step on captions cut to the batch length as on
captions padded to the full context (issue 18): every loss term, every gradient, the MLM masked
positions, the text-distillation and iBOT centres. CLIP (causal and bidirectional text), SigLIP,
SLIP, MaskCLIP and Harmony (soft CLIP + iBOT + MAE + MLM + text distillation)."""

from __future__ import annotations

import pytest
import torch

from hirl_like.data.tokenizer import ClipTokenizer, trim_to_batch_length
from hirl_like.pipelines.composed import ComposedPipeline
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.schedules import Progress
from tests.pipelines.conftest import TINY_OBJECTIVE_ARGS, TINY_TEXT, TINY_VISION

CONTEXT = 32
CAPTIONS = ["a photo of the number zero", "a digit one", "a blurry photo of the handwritten number two", "three"]
HARMONY = ["clip", "ibot", "mae", "mlm", "text_distill"]
ARGS = {**TINY_OBJECTIVE_ARGS, "simclr": {"hidden_dims": [32, 32], "out_dim": 16},
        "masked_distill": {"out_dim": 64, "head_hidden_dim": 32, "head_bottleneck_dim": 16}}
METHODS = {
    "clip_causal": (["clip"], {"clip": {}}, True),
    "clip_bidirectional": (["clip"], {"clip": {}}, False),
    "clip_chunked": (["clip"], {"clip": {"chunk_size": 3}}, True),
    "siglip": (["clip"], {"clip": {"use_siglip": True}}, True),
    "slip": (["clip", "simclr"], {"clip": {}}, True),
    "maskclip": ({"clip": 1.0, "masked_distill": 0.05, "mlm": 0.05}, {"clip": {}}, True),
    "harmony": (HARMONY, {}, False),
}


def build(objectives, extra: dict, causal: bool) -> ComposedPipeline:
    torch.manual_seed(0)
    text = {**TINY_TEXT, "context_length": CONTEXT, "causal": causal}
    return ComposedPipeline(objectives=objectives, vision=TINY_VISION, text=text, embed_dim=32, **{**ARGS, **extra})


def batch_of(captions: list[str], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b = len(captions)
    return {
        "global_crops": [torch.randn(b, 3, 32, 32, generator=g) for _ in range(2)],
        "local_crops": [torch.randn(b, 3, 16, 16, generator=g) for _ in range(2)],
        "simclr_views": [torch.randn(b, 3, 32, 32, generator=g) for _ in range(2)],
        "text": ClipTokenizer(context_length=CONTEXT)(captions),  # padded to the full context
        "label": torch.arange(b),
    }


def cut(batch: dict) -> dict:
    return {**batch, "text": trim_to_batch_length(batch["text"])}


PROGRESS = Progress(25, 10, 100, seed=0)  # past every ramp and frozen first epoch: soft targets on


def step(pipeline: ComposedPipeline, batch: dict) -> tuple[dict, dict, dict]:
    """(detached outputs, parameter gradients, loss buffers such as centres) of one training step."""
    pipeline.train()
    pipeline.update_schedules(PROGRESS)
    torch.manual_seed(7)
    out = pipeline(batch)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in pipeline.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in pipeline.named_buffers() if "center" in n}
    return {k: v.detach() for k, v in out.items()}, grads, buffers


def assert_same_step(a, b) -> None:
    for part, name in zip((a, b), ("padded", "cut")):
        assert part[1], f"{name}: no gradients"
    out_a, grads_a, buf_a = a
    out_b, grads_b, buf_b = b
    assert out_a.keys() == out_b.keys()
    for key in out_a:
        torch.testing.assert_close(out_b[key], out_a[key], atol=1e-5, rtol=1e-5, msg=key)
    assert grads_a.keys() == grads_b.keys()
    for key in grads_a:
        torch.testing.assert_close(grads_b[key], grads_a[key], atol=1e-5, rtol=1e-4, msg=key)
    assert buf_a.keys() == buf_b.keys()
    for key in buf_a:
        torch.testing.assert_close(buf_b[key], buf_a[key], atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.parametrize("method", list(METHODS))
def test_cut_captions_give_the_same_step(method):
    objectives, extra, causal = METHODS[method]
    batch = batch_of(CAPTIONS)
    assert cut(batch)["text"].shape[1] == 16 < CONTEXT
    padded = step(build(objectives, extra, causal), batch)
    short = step(build(objectives, extra, causal), cut(batch))
    assert_same_step(padded, short)
    if method == "harmony":
        assert {"text_distill", "mlm", "clip"} <= set(padded[0])
        assert any("text_distill" in n for n in padded[2])  # the text centre was compared


@pytest.mark.parametrize("method", ["clip_causal", "harmony"])
def test_a_batch_of_one_caption(method):
    objectives, extra, causal = METHODS[method]
    batch = batch_of(["a photo of the number seven"])
    assert cut(batch)["text"].shape == (1, 8)
    assert_same_step(step(build(objectives, extra, causal), batch), step(build(objectives, extra, causal), cut(batch)))


def test_over_long_caption_keeps_its_end_token_and_the_same_step():
    long = " ".join(["seven"] * 50)
    batch = batch_of([long, "two", "a digit one", "three"])
    assert cut(batch)["text"].shape[1] == CONTEXT  # capped at the context
    assert batch["text"][0, -1] == 49407
    objectives, extra, causal = METHODS["harmony"]
    assert_same_step(step(build(objectives, extra, causal), batch), step(build(objectives, extra, causal), cut(batch)))


def test_mlm_masks_the_same_positions_at_any_length():
    pipeline = build(HARMONY, {}, False)
    batch = batch_of(CAPTIONS * 4)  # 16 captions: enough masked words to notice a shifted draw
    masks = []
    for b in (batch, cut(batch), {**batch, "text": batch["text"][:, :24]}):
        ids, mask = StepCache(pipeline.backbones, b, PROGRESS).get("masked_text", mask_prob=0.3)
        masks.append((ids, mask))
    full_ids, full_mask = masks[0]
    assert full_mask.sum() > 5
    for ids, mask in masks[1:]:
        length = ids.shape[1]
        assert torch.equal(mask, full_mask[:, :length]) and torch.equal(ids, full_ids[:, :length])
    assert not full_mask[:, 16:].any()  # padding is never masked
    # another step seed masks other words (the draw is the step's)
    other = StepCache(pipeline.backbones, cut(batch), Progress(26, 10, 100, seed=0)).get("masked_text", mask_prob=0.3)[1]
    assert not torch.equal(other, masks[1][1])


def test_grad_checkpointing_and_chunked_clip_give_the_same_harmony_step():
    """Issue 18 item 2 on the whole method: both towers checkpointed per block (drop path on, so
    the recomputation must replay the RNG) and CLIP's logits in blocks of 3 rows (soft targets on)."""
    def harmony(memory_options: bool) -> ComposedPipeline:
        torch.manual_seed(0)
        vision = {**TINY_VISION, "drop_path_rate": 0.2, "grad_checkpointing": memory_options}
        text = {**TINY_TEXT, "context_length": CONTEXT, "grad_checkpointing": memory_options}
        clip = {**ARGS["clip"], "chunk_size": 3 if memory_options else None}
        return ComposedPipeline(objectives=HARMONY, vision=vision, text=text, embed_dim=32, **{**ARGS, "clip": clip})

    batch = cut(batch_of(CAPTIONS * 2))
    assert_same_step(step(harmony(False), batch), step(harmony(True), batch))
