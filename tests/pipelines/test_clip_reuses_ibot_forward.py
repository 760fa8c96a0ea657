"""CLIP's student image pass reuses the rows of crop 1 that iBOT's masked forward left unmasked.

The loss and every gradient must equal those of CLIP running its own forward on all of crop 1
(no drop path, so the two forwards are the same function), the student ViT must see only the
masked rows of crop 1 a second time, and the order of objectives in the config must not matter.
"""

from __future__ import annotations

import pytest
import torch

from hirl_like.pipelines.composed import ComposedPipeline
from hirl_like.pipelines.forward_table import SHARED_FORWARDS
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.schedules import Progress
from tests.pipelines.conftest import TINY_OBJECTIVE_ARGS, TINY_TEXT, TINY_VISION, tiny_batch

VISION = {**TINY_VISION, "drop_path_rate": 0.0}
BATCH = 8
# Per-image mask ratio: 0 or 0.3 +- 0.2 (iBOT's rule, about half the images unmasked), none, every image.
RATIOS = {"mixed": ((0.0, 0.3), (0.0, 0.2)), "nothing_masked": (0.0, 0.0), "every_image_masked": (0.4, 0.1)}


def build(objectives: list[str], ratio: str) -> ComposedPipeline:
    torch.manual_seed(0)
    pred_ratio, pred_ratio_var = RATIOS[ratio]
    args = {name: dict(TINY_OBJECTIVE_ARGS[name]) for name in objectives}
    args["ibot"].update(pred_ratio=pred_ratio, pred_ratio_var=pred_ratio_var)
    return ComposedPipeline(objectives=objectives, vision=VISION, text=TINY_TEXT, embed_dim=32, **args)


def run(pipeline: ComposedPipeline, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[int]]:
    """One forward/backward; returns (terms, gradients, batch sizes of the student's 32-px forwards)."""
    vit = pipeline.backbones.student_vision
    rows: list[int] = []
    original = vit.forward_tokens

    def counting(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if x.shape[-1] == 32:
            rows.append(x.shape[0])
        return original(x, *args, **kwargs)

    vit.forward_tokens = counting  # type: ignore[method-assign]
    try:
        pipeline.zero_grad(set_to_none=True)
        pipeline.update_schedules(Progress(3, 10, 100, seed=5))
        out = pipeline(batch)
        out["loss"].backward()
    finally:
        del vit.forward_tokens
    grads = {n: p.grad.clone() for n, p in pipeline.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads, rows


def separate_crop1_forward(step: StepCache) -> torch.Tensor:
    """The reference: CLIP's own forward on every row of crop 1."""
    return step.backbones.student_vision.forward_tokens(step.view("global_crops")[0])[:, 0]


@pytest.mark.parametrize("ratio", list(RATIOS))
def test_reuse_gives_the_same_loss_and_gradients_with_fewer_rows(ratio):
    batch = tiny_batch(batch_size=BATCH)
    fast_terms, fast_grads, fast_rows = run(build(["clip", "ibot"], ratio), batch)
    reference = build(["clip", "ibot"], ratio)
    reference.forwards = SHARED_FORWARDS.with_compute("student_crop1_cls", separate_crop1_forward)
    slow_terms, slow_grads, slow_rows = run(reference, batch)

    for name in ("clip", "ibot", "loss"):
        torch.testing.assert_close(fast_terms[name], slow_terms[name], msg=name)
    assert fast_grads.keys() == slow_grads.keys()
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=1e-4, atol=1e-6, msg=name)

    # The reference runs iBOT's 2 x B masked rows and CLIP's B rows; the reuse only crop 1's masked rows.
    assert sorted(slow_rows) == [BATCH, 2 * BATCH]
    assert 2 * BATCH in fast_rows and len(fast_rows) <= 2
    extra = sum(fast_rows) - 2 * BATCH  # rows CLIP ran again
    if ratio == "nothing_masked":
        assert extra == 0
    elif ratio == "every_image_masked":
        assert extra == BATCH
    else:
        assert 0 < extra < BATCH, f"the mixed case should mask some but not all of crop 1, got {extra} of {BATCH}"


def test_order_of_objectives_does_not_matter():
    batch = tiny_batch(batch_size=BATCH)
    clip_first, ibot_first = build(["clip", "ibot"], "mixed"), build(["ibot", "clip"], "mixed")
    ibot_first.load_state_dict(clip_first.state_dict())  # same weights (construction order differs)
    a_terms, a_grads, a_rows = run(clip_first, batch)
    b_terms, b_grads, b_rows = run(ibot_first, batch)
    assert sorted(a_rows) == sorted(b_rows)
    for name in ("clip", "ibot", "loss"):
        torch.testing.assert_close(a_terms[name], b_terms[name], msg=name)
    for name in a_grads:
        torch.testing.assert_close(a_grads[name], b_grads[name], rtol=1e-4, atol=1e-6, msg=name)
