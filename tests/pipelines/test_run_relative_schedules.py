"""Issue 14's recipe options: schedules as a share of the run, the EMA half-life, the MAE mask-ratio
schedule, masking of CLIP's image (random / attentive), and the soft-target diagnostics."""

from __future__ import annotations

import math

import pytest
import torch

from hirl_like.data.masking import attentive_keep
from hirl_like.pipelines.objectives.clip import ClipObjective
from hirl_like.schedules import Progress, check_span
from tests.pipelines.conftest import tiny_batch
from tests.pipelines.test_composed import build, run_step


# -- spans ---------------------------------------------------------------------------------------
def test_a_span_is_epochs_or_a_share_of_the_run():
    progress = Progress(0, iters_per_epoch=20, total_iterations=400)
    assert progress.iterations(3) == 60 and progress.iterations(0.5) == 10
    assert progress.iterations("40%") == 160 and progress.iterations("100%") == 400
    assert progress.epochs("25%") == 5
    for bad in ("40", "140%", "-5%", -1, math.inf, True, [1]):
        with pytest.raises(ValueError, match="warmup"):
            check_span(bad, "warmup")


def test_share_of_the_run_gives_the_same_ramp_as_the_equivalent_epochs():
    by_share = build(["clip"], clip={"soft_targets": True, "hard_labels_weight_epochs": "40%"})
    by_epochs = build(["clip"], clip={"soft_targets": True, "hard_labels_weight_epochs": 4})
    for it in (0, 13, 40, 77, 100):
        progress = Progress(it, 10, 100)  # 40% of 100 iterations = 4 epochs of 10
        assert by_share.update_schedules(progress) == by_epochs.update_schedules(progress)
    teacher = build(["ibot"], ibot={"out_dim": 64, "patch_out_dim": 64, "head_hidden_dim": 32, "head_bottleneck_dim": 16,
                                     "warmup_teacher_temp_epochs": "50%", "warmup_teacher_patch_temp": 0.04,
                                     "teacher_patch_temp": 0.08})
    assert teacher.update_schedules(Progress(25, 10, 100))["ibot/teacher_patch_temp"] == pytest.approx(0.06)
    with pytest.raises(ValueError, match="clip.hard_labels_weight_epochs"):
        build(["clip"], clip={"soft_targets": True, "hard_labels_weight_epochs": "forty"})


def test_ema_half_life_sets_the_start_momentum_for_any_budget():
    for total in (100, 400):
        pipeline = build(["clip", "ibot"], ema_half_life="5%")
        pipeline.update_schedules(Progress(0, 10, total))
        m = pipeline.ema_momentum
        assert m ** (0.05 * total) == pytest.approx(0.5)  # the teacher's weight on its past halves in 5% of the run
    with pytest.raises(ValueError, match="pipeline.ema_half_life"):
        build(["clip", "ibot"], ema_half_life="5")



def test_teacher_initial_share_is_what_the_ema_keeps_of_the_initial_weights(capsys):
    """Reference: run the EMA itself on a scalar teacher that starts at 1 while its student sits at 0;
    after the run the teacher holds exactly its share of the initialisation."""
    from hirl_like.engine.trainer import warn_if_teachers_lag

    pipeline = build(["clip", "ibot"], ema_momentum=0.99)
    teacher = 1.0
    for it in range(400):
        pipeline.update_schedules(Progress(it, 10, 400))
        teacher = pipeline.ema_momentum * teacher + (1 - pipeline.ema_momentum) * 0.0
    assert pipeline.teacher_initial_share(10, 400) == pytest.approx(teacher, rel=1e-9)
    assert teacher == pytest.approx(0.134, abs=1e-3)  # 0.99 -> 1 over 400 iterations: 13% random init left
    assert pipeline.teacher_initial_share(10, 400, run_iterations=200) > teacher  # stopped half-way: more left
    warn_if_teachers_lag(pipeline, 10, 400, 400)
    assert "13% of their random initialisation" in capsys.readouterr().err

    fitted = build(["clip", "ibot"], ema_half_life="1%")
    assert fitted.teacher_initial_share(10, 400) < 1e-12
    warn_if_teachers_lag(fitted, 10, 400, 400)
    assert capsys.readouterr().err == ""
    assert build(["clip"], clip={"soft_targets": False}).teacher_initial_share(10, 400) is None  # no teacher, nothing to say


# -- MAE mask-ratio schedule --------------------------------------------------------------------
def test_mae_mask_ratio_follows_its_schedule(batch):
    pipeline = build(["mae"], mae={"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
                                  "mask_ratio_schedule": [0.5, 0.75]})
    mae = pipeline.objectives["mae"]
    calls: list[int] = []
    original = pipeline.backbones.student_vision.forward_tokens

    def spy(images, mask=None, ids_keep=None):
        calls.append(ids_keep.shape[1])
        return original(images, mask=mask, ids_keep=ids_keep)

    pipeline.backbones.student_vision.forward_tokens = spy
    for it in (0, 40, 100):
        expected = 0.5 + 0.25 * it / 100
        assert pipeline.update_schedules(Progress(it, 10, 100))["mae/mask_ratio"] == pytest.approx(expected)
        pipeline(batch)
        assert calls[-1] == int(16 * (1 - expected))  # visible patches of the 4x4 grid
    assert mae.mask_ratio == pytest.approx(0.75)
    with pytest.raises(ValueError, match="mask_ratio_schedule"):
        build(["mae"], mae={"mask_ratio_schedule": [0.5]})
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        build(["mae"], mae={"mask_ratio_schedule": [0.5, 1.0]})


# -- masking CLIP's image -----------------------------------------------------------------------
def test_attentive_keep_keeps_the_most_attended_patches():
    attention = torch.tensor([[0.05, 0.40, 0.10, 0.30, 0.15], [0.5, 0.1, 0.2, 0.15, 0.05]])
    assert attentive_keep(attention, 0.6).tolist() == [[1, 3], [0, 2]]  # 2 of 5 kept, ascending
    assert attentive_keep(attention, 0.0).tolist() == [[0, 1, 2, 3, 4]] * 2


def test_cls_attention_equals_timm_attention_weights():
    """The recomputed last-block [CLS] attention equals the weights timm's non-fused path forms."""
    pipeline = build(["clip"])
    vit = pipeline.backbones.student_vision.eval()
    images = tiny_batch()["global_crops"][0]
    attn = vit.blocks[-1].attn
    captured = []
    attn.fused_attn = False
    handle = attn.attn_drop.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    with torch.no_grad():
        vit.forward_tokens(images)
    handle.remove()
    expected = captured[0][:, :, 0, 1:].mean(dim=1)  # (B, heads, T, T) -> [CLS] row, patches, head mean
    assert torch.allclose(vit.cls_attention(images), expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["random", "attentive"])
def test_masked_clip_image_runs_the_student_on_the_kept_patches(mode, batch):
    pipeline = build(["clip"], clip={"image_mask": mode, "image_mask_ratio": 0.5})
    kept: list[torch.Tensor | None] = []
    original = pipeline.backbones.student_vision.forward_tokens

    def spy(images, mask=None, ids_keep=None):
        kept.append(ids_keep)
        return original(images, mask=mask, ids_keep=ids_keep)

    pipeline.backbones.student_vision.forward_tokens = spy
    out = run_step(pipeline, batch)
    out["loss"].backward()
    assert len(kept) == 1 and kept[0].shape == (4, 8)  # one student pass over crop 1, 8 of its 16 patches
    if mode == "attentive":  # the teacher's most attended patches
        attention = pipeline.backbones.teacher_vision.cls_attention(batch["global_crops"][0])
        assert torch.equal(kept[0], attentive_keep(attention, 0.5))
    else:  # a different draw for every image
        assert len({tuple(row.tolist()) for row in kept[0]}) > 1
    with pytest.raises(ValueError, match="clip.image_mask"):
        build(["clip"], clip={"image_mask": "blocks"})


# -- soft-target diagnostics --------------------------------------------------------------------
def test_teacher_diagnostics_against_hand_computed_values():
    eye = torch.eye(4)
    right = ClipObjective.teacher_diagnostics(eye, eye, temperature=0.1)
    assert right["teacher_acc"] == 100.0
    # each row: softmax of [10, 0, 0, 0] -> entropy of (e^10, 1, 1, 1) / Z
    p = torch.softmax(torch.tensor([10.0, 0, 0, 0]), 0)
    assert right["target_entropy"] == pytest.approx(float(-(p * p.log()).sum()), rel=1e-4)
    shifted = ClipObjective.teacher_diagnostics(eye, eye.roll(1, dims=0), temperature=0.1)
    assert shifted["teacher_acc"] == 0.0
    uniform = ClipObjective.teacher_diagnostics(torch.ones(4, 3), torch.ones(4, 3), temperature=0.1)
    assert uniform["target_entropy"] == pytest.approx(math.log(4))


def test_soft_clip_logs_teacher_accuracy_and_ibot_its_target_entropy(batch):
    out = run_step(build(["clip", "ibot"]), batch)
    assert {"clip/teacher_acc", "clip/target_entropy", "ibot/cls_target_entropy"} <= set(out)
    assert 0.0 <= float(out["ibot/cls_target_entropy"]) <= math.log(128) + 1e-4
