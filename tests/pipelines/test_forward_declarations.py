"""Objectives declare the views and shared forwards they read; the cache computes each once and
refuses undeclared reads; declarations are checked when the pipeline is built."""

from __future__ import annotations

import pytest
import torch

from hirl_like.pipelines.composed import ComposedPipeline
from hirl_like.pipelines.forward_table import SHARED_FORWARDS, ForwardTable, forward_key
from hirl_like.pipelines.objectives.mae import MAEObjective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.schedules import Progress
from tests.pipelines.conftest import TINY_OBJECTIVE_ARGS, TINY_TEXT, TINY_VISION, tiny_batch

HARMONY = ["clip", "ibot", "mae", "mlm", "text_distill"]


def build(objectives, **extra) -> ComposedPipeline:
    torch.manual_seed(0)
    args = {**TINY_OBJECTIVE_ARGS, **extra}
    pipeline = ComposedPipeline(objectives=objectives, vision=TINY_VISION, text=TINY_TEXT, embed_dim=32, **args)
    pipeline.update_schedules(Progress(5, 10, 100))  # soft CLIP targets active
    return pipeline


def test_harmony_declares_which_objectives_share_each_forward():
    readers = build(HARMONY).shared_forwards()
    assert readers["teacher_global_tokens"] == ["clip", "ibot"]  # one teacher ViT forward
    assert readers["teacher_text_tokens"] == ["clip", "text_distill"]  # one text-teacher forward
    assert readers["student_masked_text_tokens"] == ["mlm", "text_distill"]  # one masked-caption forward
    assert readers["student_masked_global_tokens"] == ["clip", "ibot"]  # CLIP reuses iBOT's unmasked rows
    assert "mae" not in sum(readers.values(), [])  # its token-drop forward is its own
    assert build(HARMONY).required_views() == {"global_crops", "local_crops", "text"}


def test_hard_clip_declares_no_teacher_forward():
    readers = build(["clip"], clip={"soft_targets": False}).shared_forwards()
    assert not any(name.startswith("teacher") for name in readers)


def test_reading_an_undeclared_forward_fails_with_the_fix(monkeypatch):
    pipeline = build(["clip"], clip={"soft_targets": False})
    clip = pipeline.objectives["clip"]
    monkeypatch.setattr(clip, "requires", lambda: ("student_image_embedding",))
    with pytest.raises(RuntimeError, match=r"objective 'clip' read the shared forward student_text_embedding.*ClipObjective.requires"):
        pipeline(tiny_batch())


def test_reading_an_undeclared_view_fails_with_the_fix():
    pipeline = build(["mae"])
    pipeline.objectives["mae"].views = ()  # the instance attribute hides the class declaration
    with pytest.raises(RuntimeError, match=r"objective 'mae' read the batch view 'global_crops' without declaring"):
        pipeline(tiny_batch())


def test_a_forward_reading_beyond_its_uses_fails():
    pipeline = build(["clip"], clip={"soft_targets": False})
    pipeline.forwards = SHARED_FORWARDS.with_compute("student_text_embedding", lambda step: step.get("text_valid_mask"))
    with pytest.raises(RuntimeError, match=r"shared forward 'student_text_embedding' read the shared forward text_valid_mask"):
        pipeline(tiny_batch())


def test_unknown_forward_or_bad_arguments_fail_when_the_pipeline_is_built(monkeypatch):
    monkeypatch.setattr(MAEObjective, "requires", lambda self: ("teacher_global_tokns",))
    with pytest.raises(ValueError, match=r"objective 'mae'.*did you mean 'teacher_global_tokens'"):
        build(["mae"])
    monkeypatch.setattr(MAEObjective, "requires", lambda self: (forward_key("masked_text", mask_probability=0.2),))
    with pytest.raises(ValueError, match=r"masked_text\(mask_probability=0.2\)"):
        build(["mae"])


def test_provided_values():
    pipeline = build(["ibot"])
    step = StepCache(pipeline.backbones, tiny_batch(), Progress(5, 10, 100))
    with pytest.raises(RuntimeError, match="must be provided by an objective's prepare"):
        step.get("student_global_masks")
    masks = torch.zeros(8, 16, dtype=torch.bool)
    step.provide("student_global_masks", masks)
    assert step.get("student_global_masks") is masks and step.peek("student_global_masks") is masks
    with pytest.raises(RuntimeError, match="already provided"):
        step.provide("student_global_masks", masks)
    with pytest.raises(RuntimeError, match="cannot be provided"):
        step.provide("teacher_global_tokens", masks)


def test_views_missing_or_optional():
    step = StepCache(build(["mae"]).backbones, {"global_crops": []}, Progress(0, 1, 1))
    with pytest.raises(KeyError, match="no 'global_crops'.*MultiCropTransform"):
        step.view("global_crops")
    assert step.view("local_crops", default=[]) == []
    with pytest.raises(KeyError, match="no 'text'.*image-caption"):
        step.view("text")


def test_a_forward_contributed_by_a_table_runs_once_for_every_reader():
    """A new objective's forward is a table entry: the cache computes it once per key, per step."""
    table = ForwardTable()
    calls: list[float] = []

    @table.register("doubled", views=("x",))
    def doubled(step: StepCache, factor: float = 2.0) -> torch.Tensor:
        """(B,) the batch's x times factor."""
        calls.append(factor)
        return step.view("x") * factor

    step = StepCache(None, {"x": torch.ones(3)}, Progress(0, 1, 1), forwards=table)  # type: ignore[arg-type]
    readers = [step.scoped(f"reader {i}", ["doubled"], (), "declare it") for i in range(2)]
    assert torch.equal(readers[0].get("doubled"), readers[1].get("doubled"))
    assert calls == [2.0]
    step.get("doubled", factor=3.0)  # another key: its own computation
    assert calls == [2.0, 3.0]
    assert table.get("doubled").doc == "(B,) the batch's x times factor."
    with pytest.raises(ValueError, match="already registered"):
        table.register("doubled")(lambda step: None)
