"""BYOL and HARL objectives on a tiny ResNet-18 (and a tiny ViT): each loss against a naive
re-computation with explicit loops from the same modules, the EMA target update against a
per-parameter loop, the loss types, the exported tower, and a few optimisation steps."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from hirl_like.losses.byol import BYOLLoss, symmetric_byol
from hirl_like.losses.harl import LOSS_TYPES, HARLLoss, TermPair, canonical_loss_type, foreground_on_grid, masked_average_pool, term_weights
from hirl_like.pipelines.backbones import batch_statistics
from hirl_like.pipelines.composed import ComposedPipeline
from hirl_like.pipelines.forwards.feature_maps import patch_tokens_as_map
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.schedules import Progress
from tests.losses._reference import dot

pytestmark = pytest.mark.usefixtures("one_thread")

RESNET = {"name": "resnet18", "small_image_stem": True}  # 16 px -> a 2x2 last-stage map
TINY_VIT16 = {"name": "vit", "arch": "vit_tiny", "img_size": 16, "patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2}
HEADS = {"dim": 8, "projector_hidden_dims": [16], "predictor_hidden_dims": [16]}
B = 4


def build(objective: str, vision=RESNET, momentum: float = 0.99, **args) -> ComposedPipeline:
    torch.manual_seed(0)
    node = {objective: {**HEADS, **args}}
    return ComposedPipeline(objectives=[objective], vision=vision, ema_momentum=momentum, ema_momentum_end=1.0, **node).train()


def make_batch(seed: int = 0, size: int = 16, masks: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {"global_crops": [torch.randn(B, 3, size, size, generator=g) for _ in range(2)]}
    if masks:  # hand-drawn: a different rectangle per image and view, one image all background
        views = []
        for v in range(2):
            m = torch.zeros(B, 1, size, size)
            for b in range(B - 1):
                m[b, 0, b : b + 5 + v, 2 * b : 2 * b + 6] = 1
            views.append(m)
        batch["global_masks"] = views
    return batch


def naive_regression(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 * mean_b p_b . z_b / (|p_b| |z_b|), one image at a time."""
    total = 0.0
    for b in range(p.shape[0]):
        total = total + dot(p[b], z[b]) / (dot(p[b], p[b]).sqrt() * dot(z[b], z[b]).sqrt())
    return 2 - 2 * total / p.shape[0]


def naive_masked_pool(fmap: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_hw f * m / (sum_hw m + 1) with explicit loops: (B, C, h, w), (B, 1, h, w) -> (B, C)."""
    bsz, c, h, w = fmap.shape
    rows = []
    for b in range(bsz):
        area = sum(float(mask[b, 0, i, j]) for i in range(h) for j in range(w))
        rows.append(torch.stack([sum(fmap[b, k, i, j] * mask[b, 0, i, j] for i in range(h) for j in range(w)) / (area + 1)
                                 for k in range(c)]))
    return torch.stack(rows)


def teacher_copy(module: nn.Module) -> nn.Module:
    """An independent copy of a target module running with batch statistics (train mode)."""
    return copy.deepcopy(module).train()


# -- BYOL ---------------------------------------------------------------------------------------
def test_byol_loss_matches_naive_loop_and_stops_the_gradient_on_the_target():
    g = torch.Generator().manual_seed(1)
    p1, p2 = (torch.randn(5, 6, generator=g, requires_grad=True) for _ in range(2))
    z1, z2 = (torch.randn(5, 6, generator=g, requires_grad=True) for _ in range(2))
    out = BYOLLoss()(p1, p2, z1, z2)
    expected = naive_regression(p1, z2) + naive_regression(p2, z1)
    torch.testing.assert_close(out["loss"], expected)
    out["loss"].backward()
    assert p1.grad is not None and z1.grad is None and z2.grad is None
    same = symmetric_byol(p1, p2, p2.detach() * 3, p1.detach() * 2)  # identical directions: minimum 0
    assert abs(float(same.detach())) < 1e-6


def test_byol_objective_matches_naive_two_view_loss_from_the_same_modules():
    pipeline, batch = build("byol"), make_batch(masks=False)
    pipeline.update_schedules(Progress(0, 10, 100))
    out = pipeline(batch)
    obj = pipeline.objectives["byol"]
    student, teacher = pipeline.backbones.student_vision, teacher_copy(pipeline.backbones.teacher_vision)
    target_projector = teacher_copy(obj.teacher_projector)
    with torch.no_grad():
        p = [obj.predictor(obj.projector(student(x))) for x in batch["global_crops"]]
        z = [target_projector(teacher(x)) for x in batch["global_crops"]]
    expected = naive_regression(p[0], z[1]) + naive_regression(p[1], z[0])
    torch.testing.assert_close(out["byol"], expected, rtol=1e-5, atol=1e-5)
    assert 0.0 < float(out["byol/z_std"]) <= 1.0


def test_byol_target_is_an_ema_of_backbone_and_projector_with_cosine_momentum():
    pipeline = build("byol")
    total, iteration = 100, 30
    pipeline.update_schedules(Progress(iteration, 10, total))
    m = 1 - (1 - 0.99) * (math.cos(math.pi * iteration / total) + 1) / 2  # BYOL's tau schedule
    assert pipeline.ema_momentum == pytest.approx(m)
    optimizer = torch.optim.SGD([p for p in pipeline.parameters() if p.requires_grad], lr=0.5)
    pipeline(make_batch(masks=False))["loss"].backward()
    optimizer.step()
    obj = pipeline.objectives["byol"]
    pairs = [(pipeline.backbones.student_vision, pipeline.backbones.teacher_vision), (obj.projector, obj.teacher_projector)]
    before = [{n: t.detach().clone() for n, t in teacher.named_parameters()} for _, teacher in pairs]
    pipeline.after_optimizer_step()
    for (student, teacher), old in zip(pairs, before):
        s_params, checked = dict(student.named_parameters()), 0
        for name, new in teacher.named_parameters():
            flat_old, flat_s, flat_new = old[name].flatten(), s_params[name].detach().flatten(), new.flatten()
            for k in range(0, flat_new.numel(), max(1, flat_new.numel() // 7)):  # a naive loop over entries
                assert float(flat_new[k]) == pytest.approx(m * float(flat_old[k]) + (1 - m) * float(flat_s[k]), abs=1e-6)
            checked += 1
            assert not new.requires_grad
        assert checked == len(s_params)
        for name, buf in teacher.named_buffers():  # BatchNorm statistics are copied from the online network
            torch.testing.assert_close(buf, dict(student.named_buffers())[name])
    assert not hasattr(obj, "teacher_predictor")  # the predictor is online only


def test_byol_and_harl_export_the_online_backbone_and_need_two_views():
    for name in ("byol", "harl"):
        pipeline = build(name)
        assert pipeline.export_vision() is pipeline.backbones.student_vision
        batch = make_batch()
        batch["global_crops"] = batch["global_crops"][:1]
        with pytest.raises(ValueError, match="2 global crops"):
            pipeline(batch)


# -- HARL: the loss module ----------------------------------------------------------------------
def test_masked_average_pool_and_grid_masks_match_loops():
    g = torch.Generator().manual_seed(2)
    fmap = torch.randn(3, 4, 3, 3, generator=g)
    mask = (torch.rand(3, 1, 3, 3, generator=g) > 0.5).float()
    mask[2] = 0  # empty region: the zero vector, not a division by zero
    torch.testing.assert_close(masked_average_pool(fmap, mask), naive_masked_pool(fmap, mask))
    assert torch.count_nonzero(masked_average_pool(fmap, mask)[2]) == 0
    pixels = torch.zeros(1, 1, 6, 6)
    pixels[0, 0, 0, 0] = 1  # one pixel of the top-left 3x3 cell
    pixels[0, 0, 3:, 3:] = 1  # the whole bottom-right cell
    assert foreground_on_grid(pixels, (2, 2)).flatten().tolist() == [1, 0, 0, 1]  # any overlap (reference)
    assert foreground_on_grid(pixels, (2, 2), threshold=0.5).flatten().tolist() == [0, 0, 0, 1]


def test_harl_loss_types_and_weights():
    g = torch.Generator().manual_seed(3)
    pairs = [TermPair(*(torch.randn(5, 6, generator=g) for _ in range(4))) for _ in range(3)]
    terms = [naive_regression(t.p1, t.z2) + naive_regression(t.p2, t.z1) for t in pairs]
    a, b = 0.3, 0.6
    expected = {
        "byol+f+b": b * terms[0] + (1 - b) * (a * terms[1] + (1 - a) * terms[2]),
        "byol+f": b * terms[0] + (1 - b) * terms[1],
        "f+b": a * terms[1] + (1 - a) * terms[2],
        "f": terms[1],
        "byol": terms[0],
    }
    assert set(expected) == set(LOSS_TYPES)
    for kind, value in expected.items():
        out = HARLLoss(kind, alpha=a, beta=b)(*pairs)
        torch.testing.assert_close(out["loss"], value, rtol=1e-5, atol=1e-5)
        for name, term in zip(("byol", "fg", "bg"), terms):  # every term logged whatever the type
            torch.testing.assert_close(out[name], term, rtol=1e-5, atol=1e-5)
    assert canonical_loss_type("byol+f_loss+b_loss") == "byol+f+b" and canonical_loss_type("f_loss") == "f"
    assert term_weights("byol+f+b") == {"byol": 0.5, "fg": 0.25, "bg": 0.25}
    with pytest.raises(ValueError, match="loss_type"):
        HARLLoss("fb")
    with pytest.raises(ValueError, match="alpha"):
        HARLLoss(alpha=1.5)


# -- HARL: the objective ------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type", ["byol+f+b", "f+b"])
def test_harl_objective_matches_naive_loops_over_the_feature_map(loss_type):
    pipeline, batch = build("harl", loss_type=loss_type), make_batch()
    pipeline.update_schedules(Progress(0, 10, 100))
    out = pipeline(batch)
    obj = pipeline.objectives["harl"]
    student, teacher = pipeline.backbones.student_vision, teacher_copy(pipeline.backbones.teacher_vision)
    online = lambda v: obj.predictor(obj.projector(v))  # noqa: E731
    target_projector = teacher_copy(obj.teacher_projector)
    terms = {}
    with torch.no_grad():
        maps = [student.forward_features(x) for x in batch["global_crops"]]
        t_maps = [teacher.forward_features(x) for x in batch["global_crops"]]
        h, w = maps[0].shape[-2:]
        assert (h, w) == (2, 2)
        fg = []
        for m in batch["global_masks"]:  # a cell is foreground when any of its pixels is (threshold 0)
            cells = torch.zeros(B, 1, h, w)
            sh, sw = m.shape[-2] // h, m.shape[-1] // w
            for b in range(B):
                for i in range(h):
                    for j in range(w):
                        cells[b, 0, i, j] = float(m[b, 0, i * sh : (i + 1) * sh, j * sw : (j + 1) * sw].sum() > 0)
            fg.append(cells)
        for name in ("byol", "fg", "bg"):
            def pool(fmap, v):
                if name == "byol":
                    return fmap.mean(dim=(2, 3))
                return naive_masked_pool(fmap, fg[v] if name == "fg" else 1 - fg[v])
            p = [online(pool(maps[v], v)) for v in range(2)]
            z = [target_projector(pool(t_maps[v], v)) for v in range(2)]
            terms[name] = naive_regression(p[0], z[1]) + naive_regression(p[1], z[0])
    for name in terms:
        torch.testing.assert_close(out[f"harl/{name}"], terms[name], rtol=1e-4, atol=1e-5)
    wts = term_weights(loss_type)
    torch.testing.assert_close(out["harl"], sum(wts[n] * terms[n] for n in terms), rtol=1e-4, atol=1e-5)
    assert 0.0 < float(out["harl/fg_share"]) < 1.0


def test_harl_on_a_vit_pools_patch_tokens_from_the_one_token_pass(monkeypatch):
    pipeline, batch = build("harl", vision=TINY_VIT16), make_batch()
    calls = []
    for vit in (pipeline.backbones.student_vision, pipeline.backbones.teacher_vision):
        original = vit.forward_tokens
        monkeypatch.setattr(vit, "forward_tokens", lambda x, *a, _f=original, **k: calls.append(1) or _f(x, *a, **k))
    pipeline.update_schedules(Progress(0, 10, 100))
    out = pipeline(batch)
    assert len(calls) == 2  # one student and one teacher pass over the stacked global crops
    obj, vit = pipeline.objectives["harl"], pipeline.backbones.student_vision
    with torch.no_grad():
        tokens = vit.forward_tokens(batch["global_crops"][0])
        fmap = torch.zeros(B, tokens.shape[2], 4, 4)
        for n in range(16):  # row-major patch order
            fmap[:, :, n // 4, n % 4] = tokens[:, 1 + n]
        torch.testing.assert_close(patch_tokens_as_map(vit, tokens, (16, 16)), fmap)
        cells = foreground_on_grid(batch["global_masks"][0], (4, 4))
        assert torch.allclose(masked_average_pool(fmap, cells), naive_masked_pool(fmap, cells), atol=1e-5)
    assert all(math.isfinite(float(v.detach())) for v in out.values())
    assert obj.projector.mlp[0].in_features == vit.embed_dim


def test_harl_without_masks_says_how_to_get_them():
    pipeline = build("harl")
    with pytest.raises(ValueError, match="data.masks"):
        pipeline(make_batch(masks=False))


def test_harl_heads_are_shared_and_the_loss_goes_down():
    pipeline = build("harl", momentum=0.9)
    obj = pipeline.objectives["harl"]
    assert [type(m).__name__ for m in obj.projector.mlp] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert [type(m).__name__ for m in obj.predictor.mlp] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert not any(isinstance(m, nn.Module) and "fg" in n for n, m in obj.named_modules())  # no per-region heads
    batch = make_batch()
    optimizer = torch.optim.SGD([p for p in pipeline.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for it in range(8):
        pipeline.update_schedules(Progress(it, 10, 100))
        out = pipeline(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        pipeline.after_optimizer_step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < losses[0], losses


def test_teacher_feature_maps_use_batch_statistics_without_touching_running_stats():
    pipeline, batch = build("harl"), make_batch()
    teacher = pipeline.backbones.teacher_vision
    stats = [b.clone() for n, b in teacher.named_buffers() if "running" in n]
    pipeline.update_schedules(Progress(0, 10, 100))
    pipeline(batch)
    assert all(torch.equal(a, b) for a, b in zip(stats, [b for n, b in teacher.named_buffers() if "running" in n]))
    with torch.no_grad(), batch_statistics(teacher):
        expected = teacher.forward_features(batch["global_crops"][1])
    step = StepCache(pipeline.backbones, batch, Progress(0, 10, 100))
    torch.testing.assert_close(step.get("teacher_global_feature_maps")[B:], expected)
