"""iBOT and text distillation run the student head on the scored (masked) tokens only; the loss and
its gradients must equal those of the head applied to every token and the loss selecting after."""

from __future__ import annotations

import copy

import pytest
import torch

from hirl_like.data.masking import generate_block_masks
from hirl_like.pipelines.composed import ComposedPipeline
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.schedules import Progress
from tests.pipelines.conftest import TINY_OBJECTIVE_ARGS, TINY_TEXT, TINY_VISION, tiny_batch

VISION = {**TINY_VISION, "drop_path_rate": 0.0}  # the reference re-runs the forward: no random drop path


def build(objective: str, **extra) -> ComposedPipeline:
    torch.manual_seed(0)
    args = {objective: {**TINY_OBJECTIVE_ARGS[objective], **extra}}
    return ComposedPipeline(objectives=[objective], vision=VISION, text=TINY_TEXT, embed_dim=32, **args)


def _grads(pipeline: ComposedPipeline) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in pipeline.named_parameters() if p.grad is not None}


def _check(pipeline: ComposedPipeline, objective, reference) -> None:
    batch, progress = tiny_batch(batch_size=6), Progress(25, 10, 100, seed=3)
    pipeline.update_schedules(progress)
    loss_module = copy.deepcopy(objective.loss)  # same centre before either call
    step = StepCache(pipeline.backbones, batch, progress)
    objective.prepare(step)  # iBOT provides its masks here, as the pipeline does
    fast = objective(step)["loss"]
    fast.backward()
    fast_grads = _grads(pipeline)
    pipeline.zero_grad(set_to_none=True)
    slow = reference(StepCache(pipeline.backbones, batch, progress), loss_module)
    slow.backward()
    torch.testing.assert_close(fast, slow)
    slow_grads = _grads(pipeline)
    assert fast_grads.keys() == slow_grads.keys()
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("ratio", [0.4, 0.0], ids=["every_image_masked", "nothing_masked"])
@pytest.mark.parametrize("shared_head", [True, False], ids=["shared_head", "two_heads"])
def test_ibot_student_head_on_masked_patches_only_matches_full_head(ratio, shared_head):
    pipeline = build("ibot", shared_head=shared_head)
    ibot = pipeline.objectives["ibot"]
    ibot.pred_ratio, ibot.pred_ratio_var = ratio, 0.1 if ratio else 0.0

    def reference(step: StepCache, loss) -> torch.Tensor:
        vit, crops, local = pipeline.backbones.student_vision, step.view("global_crops"), step.view("local_crops")
        masks = generate_block_masks(len(crops) * crops[0].shape[0], vit.grid_size, ibot.pred_ratio,
                                     ibot.pred_ratio_var, step.rng, ibot.min_aspect)
        tokens = vit.forward_tokens(torch.cat(crops), mask=masks)
        patch_head = ibot.patch_head or ibot.head  # every head on every token
        student_cls = torch.cat([ibot.head(tokens[:, 0]), ibot.head(vit.forward_tokens(torch.cat(local))[:, 0])])
        with torch.no_grad():
            teacher = step.get("teacher_global_tokens")
            teacher_cls = ibot.teacher_head(teacher[:, 0])
            teacher_patch = (ibot.teacher_patch_head or ibot.teacher_head)(teacher[:, 1:])
        loss.global_crops, loss.local_crops = len(crops), len(local)
        return loss(student_cls, patch_head(tokens[:, 1:]), teacher_cls, teacher_patch, masks,
                    ibot.teacher_temp, ibot.teacher_patch_temp)["loss"]

    _check(pipeline, ibot, reference)


def test_text_distill_student_head_on_masked_tokens_only_matches_full_head():
    pipeline = build("text_distill")
    objective = pipeline.objectives["text_distill"]

    def reference(step: StepCache, loss) -> torch.Tensor:
        _, mask = step.get("masked_text", mask_prob=objective.mask_prob)
        student = objective.head(step.get("student_masked_text_tokens", mask_prob=objective.mask_prob))  # every position
        with torch.no_grad():
            teacher = objective.teacher_head(step.get("teacher_text_tokens", causal=False))
        return loss(student, teacher, mask, step.get("text_valid_mask"), objective.teacher_temp)["loss"]

    _check(pipeline, objective, reference)
