"""The composable pipeline: every objective alone, every pair with CLIP, the full Harmony set;
shared forwards computed once; EMA; schedules; export."""

from __future__ import annotations

import itertools
import math

import pytest
import timm
import torch

from hirl_like.pipelines.composed import ComposedPipeline, parse_objectives
from hirl_like.registry import PIPELINES
from hirl_like.schedules import Progress
from tests.pipelines.conftest import TINY_OBJECTIVE_ARGS, TINY_TEXT, TINY_VISION, tiny_batch

HARMONY = ["clip", "ibot", "mae", "mlm", "text_distill"]
COMBINATIONS = [[n] for n in HARMONY] + [["clip", n] for n in HARMONY[1:]] + [HARMONY]


def build(objectives, **extra) -> ComposedPipeline:
    torch.manual_seed(0)
    args = {k: v for k, v in TINY_OBJECTIVE_ARGS.items()}
    args.update(extra)
    return ComposedPipeline(objectives=objectives, vision=TINY_VISION, text=TINY_TEXT, embed_dim=32, **args)


def run_step(pipeline: ComposedPipeline, batch: dict, iteration: int = 5) -> dict:
    # iteration 5 of 10 per epoch: past the start of every ramp, so soft targets are active.
    pipeline.update_schedules(Progress(iteration, 10, 100, seed=0))
    return pipeline(batch)


@pytest.mark.parametrize("objectives", COMBINATIONS, ids=lambda o: "+".join(o))
def test_every_single_objective_pair_and_full_set_trains(objectives, batch):
    pipeline = build(objectives)
    out = run_step(pipeline, batch)
    assert set(objectives) <= set(out)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    vit_grads = [p.grad for p in pipeline.backbones.student_vision.parameters() if p.requires_grad]
    if set(objectives) - {"mlm", "text_distill"}:
        assert any(g is not None and g.abs().sum() > 0 for g in vit_grads)
    if set(objectives) & {"clip", "mlm", "text_distill"}:
        assert any(p.grad is not None for p in pipeline.backbones.student_text.parameters())
    for name, p in pipeline.named_parameters():  # teachers never receive gradients
        if "teacher" in name:
            assert p.grad is None and not p.requires_grad, name


def test_objective_spellings():
    assert parse_objectives("clip_ibot_mae_mlm_text_distill") == {n: 1.0 for n in HARMONY}
    assert parse_objectives(["clip", "mae"]) == {"clip": 1.0, "mae": 1.0}
    assert parse_objectives({"clip": 1.0, "mlm": 0.05}) == {"clip": 1.0, "mlm": 0.05}
    with pytest.raises(KeyError, match="ibot"):
        parse_objectives(["ibott"])
    with pytest.raises(ValueError, match="empty"):
        parse_objectives([])


def test_unknown_pipeline_argument_names_closest():
    with pytest.raises(ValueError, match="did you mean 'ibot'"):
        ComposedPipeline(objectives=["clip"], vision=TINY_VISION, text=TINY_TEXT, ibto={})


def test_weights_scale_the_sum(batch):
    a = build({"clip": 1.0, "mae": 1.0})
    out_a = run_step(a, batch)
    b = build({"clip": 1.0, "mae": 0.5})
    out_b = run_step(b, batch)
    assert torch.allclose(out_a["loss"], out_a["clip"] + out_a["mae"], atol=1e-5)
    assert torch.allclose(out_b["loss"], out_b["clip"] + 0.5 * out_b["mae"], atol=1e-5)


def count_calls(module: torch.nn.Module, method: str) -> list[int]:
    calls = [0]
    original = getattr(module, method)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(module, method, counted)
    return calls


def test_shared_forwards_run_once(batch):
    """One teacher ViT forward serves iBOT and soft CLIP; one text-teacher forward serves soft CLIP
    and text distillation; the masked-caption student forward serves MLM and text distillation."""
    pipeline = build(HARMONY)
    bb = pipeline.backbones
    teacher_vision = count_calls(bb.teacher_vision, "forward_tokens")
    teacher_text = count_calls(bb.teacher_text, "forward_tokens")
    student_text = count_calls(bb.student_text, "forward_tokens")
    run_step(pipeline, batch)
    assert teacher_vision[0] == 1
    assert teacher_text[0] == 1
    assert student_text[0] == 2  # unmasked caption (CLIP) + masked caption (MLM and text distillation)


def test_only_needed_parts_are_built():
    ibot_only = ComposedPipeline(objectives=["ibot"], vision=TINY_VISION, text=TINY_TEXT, ibot=TINY_OBJECTIVE_ARGS["ibot"])
    assert ibot_only.backbones.student_text is None and ibot_only.backbones.teacher_vision is not None
    clip_only = PIPELINES.build({"name": "CLIP", "vision": TINY_VISION, "text": TINY_TEXT, "embed_dim": 32})
    assert clip_only.backbones.teacher_vision is None and clip_only.backbones.teacher_text is None
    assert clip_only.backbones.student_vision.mask_token is None
    with pytest.raises(ValueError, match="no 'text' node"):
        ComposedPipeline(objectives=["clip"], vision=TINY_VISION)


@pytest.mark.parametrize("objectives", [["clip", "ibot"], ["clip", "mlm", "text_distill"]], ids="+".join)
def test_exports_pair_towers_that_trained_together(objectives):
    """A teacher on one tower means a teacher on the other, so the exported ViT (the EMA teacher)
    meets the EMA text tower and projection in zero-shot, never a student it did not train with."""
    pipeline = build(objectives, clip={"soft_targets": False})
    backbones = pipeline.backbones
    assert backbones.teacher_vision is not None and backbones.teacher_text is not None
    text, projection = backbones.exported_text()
    assert pipeline.export_vision() is backbones.teacher_vision
    assert text is backbones.teacher_text and projection is backbones.teacher_image_projection
    assert any(teacher is backbones.teacher_text for _, teacher in pipeline._ema_pairs())  # it follows the EMA


def test_ema_update_follows_formula(batch):
    pipeline = build(["clip", "ibot"])
    pipeline.update_schedules(Progress(0, 10, 100))
    m = pipeline.ema_momentum
    assert m == pytest.approx(0.996)
    student = pipeline.backbones.student_vision.cls_token
    teacher = pipeline.backbones.teacher_vision.cls_token
    with torch.no_grad():
        student.add_(1.0)
    expected = m * teacher.detach().clone() + (1 - m) * student.detach().clone()
    pipeline.after_optimizer_step()
    assert torch.allclose(teacher, expected, atol=1e-7)
    # momentum follows 0.996 -> 1 on a cosine over the run
    pipeline.update_schedules(Progress(50, 10, 100))
    assert pipeline.ema_momentum == pytest.approx(1 - 0.004 * 0.5)


def test_hard_label_weight_cosine_and_clip_clamp(batch):
    pipeline = build(["clip"], clip={"soft_targets": True, "hard_labels_weight_end": 0.2, "hard_labels_weight_epochs": 10})
    clip = pipeline.objectives["clip"]
    assert pipeline.update_schedules(Progress(0, 10, 1000))["clip/hard_weight"] == pytest.approx(1.0)
    assert pipeline.update_schedules(Progress(50, 10, 1000))["clip/hard_weight"] == pytest.approx(0.6)
    assert pipeline.update_schedules(Progress(500, 10, 1000))["clip/hard_weight"] == pytest.approx(0.2)
    assert clip.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        clip.logit_scale.fill_(10.0)
    pipeline.after_optimizer_step()
    assert clip.logit_scale.item() == pytest.approx(math.log(100.0))


def test_soft_clip_targets_come_from_teachers(batch):
    """With a = 0.2 the CLIP term is 0.2 hard + 0.8 soft, both reported."""
    pipeline = build(["clip"], clip={"soft_targets": True, "hard_labels_weight_end": 0.2, "hard_labels_weight_epochs": 0})
    out = run_step(pipeline, batch)
    expected = 0.2 * out["clip/hard"] + 0.8 * out["clip/soft"]
    assert torch.allclose(out["clip"], expected, atol=1e-5)


def test_ibot_freezes_last_layer_in_first_epoch(batch):
    pipeline = build(["ibot"])
    run_step(pipeline, batch, iteration=3)["loss"].backward()
    head = pipeline.objectives["ibot"].head
    assert head.last_layer.weight.grad is not None
    pipeline.before_optimizer_step()
    assert head.last_layer.weight.grad is None  # epoch 0.3 < freeze_last_layer = 1
    pipeline.zero_grad()
    run_step(pipeline, batch, iteration=15)["loss"].backward()
    pipeline.before_optimizer_step()
    assert head.last_layer.weight.grad is not None


def test_masks_are_reproducible_per_iteration(batch):
    pipeline = build(["ibot"])
    a = run_step(pipeline, batch, iteration=7)["ibot/mask_ratio"]
    b = run_step(pipeline, batch, iteration=7)["ibot/mask_ratio"]
    ratios = {float(run_step(pipeline, batch, iteration=i)["ibot/mask_ratio"]) for i in range(8)}
    assert a == b and len(ratios) > 1


def test_full_harmony_loss_goes_down():
    pipeline = build(HARMONY, clip={"soft_targets": True, "hard_labels_weight_epochs": 0})
    batch = tiny_batch(batch_size=8)
    params = [p for p in pipeline.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    first = None
    for it in range(12):
        out = run_step(pipeline, batch, iteration=20 + it)  # past the frozen first epoch
        if first is None:
            first = {k: float(v) for k, v in out.items() if k in HARMONY}
        out["loss"].backward()
        pipeline.before_optimizer_step()
        opt.step()
        opt.zero_grad()
        pipeline.after_optimizer_step()
    last = {k: float(v) for k, v in out.items() if k in HARMONY}
    # The self-distillation terms (ibot, text_distill) chase a moving EMA teacher and centre, so
    # over 12 steps on one batch they need not fall (nor need the weighted total); the terms with
    # fixed targets must.
    for name in ("clip", "mae", "mlm"):
        assert last[name] < first[name], (name, first[name], last[name])
    assert math.isfinite(last["ibot"]) and math.isfinite(last["text_distill"])


def test_export_loads_strictly_into_timm():
    pipeline = build(["clip", "ibot"])
    vit = pipeline.export_vision()
    assert vit is pipeline.backbones.teacher_vision
    state = vit.export_state_dict()
    model = timm.create_model(vit.timm_name, num_classes=0, img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)
    model.load_state_dict(state, strict=True)
    text = pipeline.export_text()
    assert set(text) >= {"text", "image_projection", "text_config", "embed_dim", "logit_scale"}
    assert "text_projection.weight" in text["text"]


def test_exported_projection_pairs_with_exported_vision():
    """iBOT asks for a vision teacher (CLIP with hard targets asks for none): the exported image
    projection must be the teacher's, matching main_vit_checkpoint.pth."""
    pipeline = build(["clip", "ibot"], clip={"soft_targets": False})
    assert pipeline.backbones.teacher_vision is not None
    text = pipeline.export_text()
    assert torch.equal(text["image_projection"], pipeline.backbones.teacher_image_projection.weight)
    with torch.no_grad():
        pipeline.backbones.image_projection.weight.add_(1.0)
    assert not torch.equal(pipeline.export_text()["image_projection"], pipeline.backbones.image_projection.weight)
