"""Baseline objectives (simclr, dino, masked_distill) through the composed pipeline, each against a
naive reference of its formula, and every baseline config (pretrain + quickstart) loading and building."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from hirl_like.config import load_config
from hirl_like.data.masking import random_masking
from hirl_like.pipelines.composed import ComposedPipeline
from hirl_like.pipelines.forward_table import SHARED_FORWARDS
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import PIPELINES, RegistryError
from hirl_like.schedules import Progress
from tests.losses._reference import dot, log_softmax, row, soft_ce, softmax
from tests.pipelines.conftest import TINY_TEXT, TINY_VISION, tiny_batch

ROOT = Path(__file__).resolve().parents[2]
ARGS = {
    "simclr": {"hidden_dims": [32, 32], "out_dim": 16},
    "dino": {"out_dim": 64, "head_hidden_dim": 32, "head_bottleneck_dim": 16},
    "masked_distill": {"out_dim": 64, "head_hidden_dim": 32, "head_bottleneck_dim": 16},
    "mlm": {"decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2},
}
MASKCLIP = {"clip": 1.0, "masked_distill": 0.05, "mlm": 0.05}
COMBINATIONS = [["simclr"], ["clip", "simclr"], ["dino"], MASKCLIP]
IDS = ["simclr", "slip", "dino", "maskclip"]


def build(objectives, **extra) -> ComposedPipeline:
    torch.manual_seed(0)
    args = {**ARGS, **extra}
    return ComposedPipeline(objectives=objectives, vision=TINY_VISION, text=TINY_TEXT, embed_dim=32, **args)


def make_batch(batch_size: int = 4, seed: int = 0) -> dict:
    batch = tiny_batch(batch_size=batch_size, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    batch["simclr_views"] = [torch.randn(batch_size, 3, 32, 32, generator=g) for _ in range(2)]
    return batch


def progress(iteration: int = 25) -> Progress:
    # 10 iterations per epoch: iteration 25 is past every frozen-last-layer first epoch.
    return Progress(iteration, 10, 100, seed=0)


def run_step(pipeline: ComposedPipeline, batch: dict, iteration: int = 25) -> dict:
    pipeline.update_schedules(progress(iteration))
    return pipeline(batch)


def names(objectives) -> list[str]:
    return list(objectives) if not isinstance(objectives, dict) else list(objectives.keys())


# -- every new objective in the pipeline -----------------------------------------------------------
@pytest.mark.parametrize("objectives", COMBINATIONS, ids=IDS)
def test_forward_backward_reaches_student_and_heads(objectives):
    pipeline = build(objectives)
    pipeline.train()
    out = run_step(pipeline, make_batch())
    weights = pipeline.weights
    assert torch.isfinite(out["loss"])
    expected = sum(weights[n] * out[n] for n in names(objectives))
    assert torch.allclose(out["loss"], expected, atol=1e-5)
    out["loss"].backward()
    vit = pipeline.backbones.student_vision
    assert vit.patch_embed.proj.weight.grad is not None and vit.patch_embed.proj.weight.grad.abs().sum() > 0
    for name in names(objectives):
        own = [p for n, p in pipeline.objectives[name].named_parameters() if "teacher" not in n and p.requires_grad]
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in own), name
    for name, p in pipeline.named_parameters():
        if "teacher" in name:
            assert p.grad is None and not p.requires_grad, name


@pytest.mark.parametrize("objectives", COMBINATIONS, ids=IDS)
def test_loss_goes_down_and_teachers_follow(objectives):
    pipeline = build(objectives)
    pipeline.train()
    batch = make_batch(batch_size=8)
    opt = torch.optim.AdamW([p for p in pipeline.parameters() if p.requires_grad], lr=1e-3)
    teachers = [t for _, t in pipeline._ema_pairs()]
    assert bool(teachers) == ("dino" in names(objectives) or "masked_distill" in names(objectives))
    losses = []
    for it in range(6):
        out = run_step(pipeline, batch, iteration=20 + it)
        losses.append({k: float(out[k].detach()) for k in ["loss", *names(objectives)]})
        out["loss"].backward()
        pipeline.before_optimizer_step()
        opt.step()
        opt.zero_grad()
        before = [torch.cat([p.detach().flatten().clone() for p in t.parameters()]) for t in teachers]
        pipeline.after_optimizer_step()
        for t, old in zip(teachers, before):
            now = torch.cat([p.detach().flatten() for p in t.parameters()])
            assert not torch.equal(now, old), "an EMA teacher did not move"
    assert all(math.isfinite(v) for step in losses for v in step.values())
    assert losses[-1]["loss"] < losses[0]["loss"], losses
    for name in names(objectives):
        assert losses[-1][name] < losses[0][name], (name, losses)


def test_unknown_objective_argument_names_closest():
    with pytest.raises((RegistryError, ValueError), match="out_dim"):
        ComposedPipeline(objectives=["dino"], vision=TINY_VISION, dino={"out_dimm": 8})


# -- simclr ---------------------------------------------------------------------------------------
def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """SLIP's NT-Xent with loops: row i of view a against all of view b and the other rows of view a."""
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    b = z1.shape[0]
    total = torch.zeros(())
    for za, zb in ((z1, z2), (z2, z1)):
        for i in range(b):
            logits = [dot(za[i], zb[j]) / t for j in range(b)] + [dot(za[i], za[j]) / t for j in range(b) if j != i]
            total = total - log_softmax(logits)[i]
    return total / (2 * b)


def test_simclr_matches_naive_nt_xent_on_the_first_two_views():
    pipeline = build(["simclr"])
    pipeline.train()
    batch = make_batch()
    batch["simclr_views"].append(torch.randn(4, 3, 32, 32))  # a third view is ignored
    out = run_step(pipeline, batch)
    objective = pipeline.objectives["simclr"]
    vit = pipeline.backbones.student_vision
    with torch.no_grad():
        z1, z2 = (objective.head(vit.forward_tokens(v)[:, 0]) for v in batch["simclr_views"][:2])
    assert torch.allclose(out["simclr"], naive_nt_xent(z1, z2, 0.1), atol=1e-5)
    batch["simclr_views"][2] = torch.randn(4, 3, 32, 32)
    assert torch.allclose(run_step(pipeline, batch)["simclr"], out["simclr"], atol=1e-6)


def test_simclr_analytic_value_and_missing_views():
    pipeline = build(["simclr"])
    objective = pipeline.objectives["simclr"]

    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.ones(x.shape[0], 16) + 0 * x.sum()

    objective.head = Constant()  # every embedding equal: 2B-1 equal logits per row -> log(2B - 1)
    out = run_step(pipeline, make_batch(batch_size=4))
    assert out["simclr"].item() == pytest.approx(math.log(7), abs=1e-5)
    batch = make_batch()
    del batch["simclr_views"]
    with pytest.raises(KeyError, match="simclr_views"):
        run_step(pipeline, batch)


# -- dino -----------------------------------------------------------------------------------------
def test_dino_matches_naive_cross_view_ce():
    pipeline = build(["dino"], dino={**ARGS["dino"], "teacher_temp": 0.07, "warmup_teacher_temp": 0.04, "warmup_teacher_temp_epochs": 5})
    pipeline.train()
    batch = make_batch()
    out = run_step(pipeline, batch, iteration=25)  # teacher temperature 0.04 + 0.03 * 25/50
    objective = pipeline.objectives["dino"]
    assert objective.teacher_temp == pytest.approx(0.055)
    bb = pipeline.backbones
    with torch.no_grad():
        student = [objective.head(bb.student_vision.forward_tokens(v)[:, 0]) for v in batch["global_crops"] + batch["local_crops"]]
        teacher = [objective.teacher_head(bb.teacher_vision.forward_tokens(v)[:, 0]) for v in batch["global_crops"]]
    total, pairs = torch.zeros(()), 0
    for q, t_q in enumerate(teacher):  # the centre starts at zero
        for v, s_v in enumerate(student):
            if v == q:
                continue
            pairs += 1
            total = total + sum(soft_ce(softmax(row(t_q[b] / 0.055)), row(s_v[b] / 0.1)) for b in range(4)) / 4
    assert pairs == 2 * 3
    assert torch.allclose(out["dino"], total / pairs, atol=1e-5)
    # centre: 0.9 * 0 + 0.1 * mean of the raw teacher outputs
    assert torch.allclose(objective.loss.center, 0.1 * torch.cat(teacher).mean(0, keepdim=True), atol=1e-6)


def test_dino_analytic_uniform_value_and_frozen_last_layer():
    pipeline = build(["dino"])
    objective = pipeline.objectives["dino"]
    with torch.no_grad():  # identical prototype rows: every output is uniform over K -> loss log K
        objective.head.last_layer.weight.fill_(1.0)
        objective.teacher_head.last_layer.weight.fill_(1.0)
    assert run_step(pipeline, make_batch())["dino"].item() == pytest.approx(math.log(64), abs=1e-5)

    pipeline = build(["dino"])
    head = pipeline.objectives["dino"].head
    run_step(pipeline, make_batch(), iteration=3)["loss"].backward()
    assert head.last_layer.weight.grad is not None
    pipeline.before_optimizer_step()  # epoch 0.3 < freeze_last_layer = 1
    assert head.last_layer.weight.grad is None
    pipeline.zero_grad()
    run_step(pipeline, make_batch(), iteration=15)["loss"].backward()
    pipeline.before_optimizer_step()
    assert head.last_layer.weight.grad is not None


# -- masked_distill -------------------------------------------------------------------------------
def naive_decoder(decoder, visible, ids_keep, mask, pos_embed):
    """Rebuild the full sequence patch by patch: visible patch j -> its encoder token, removed -> mask token."""
    out = []
    for b in range(visible.shape[0]):
        seq = [visible[b, 0]]
        for j in range(mask.shape[1]):
            if mask[b, j]:
                seq.append(decoder.mask_token[0, 0])
            else:
                k = int((ids_keep[b] == j).nonzero())
                seq.append(visible[b, 1 + k])
        x = torch.stack(seq)[None] + pos_embed
        for block in decoder.blocks:
            x = block(x)
        out.append(decoder.norm(x)[0, 1:])
    return torch.stack(out)


def test_masked_distill_matches_naive_reference():
    pipeline = build(["masked_distill"])
    pipeline.train()
    pipeline.update_schedules(progress(25))
    objective = pipeline.objectives["masked_distill"]
    bb = pipeline.backbones
    batch = make_batch()
    crop = batch["global_crops"][0]
    seen = []
    original = bb.student_vision.forward_tokens
    bb.student_vision.forward_tokens = lambda x, **kw: seen.append(kw) or original(x, **kw)
    center0 = objective.center.clone()
    out = objective(StepCache(bb, batch, progress(25)))
    bb.student_vision.forward_tokens = original
    assert seen[0]["ids_keep"].shape == (4, 4) and seen[0].get("mask") is None  # encoder sees 4 of 16 patches

    # the same masks again from a fresh step of the same iteration
    ids_keep, mask, _ = random_masking(4, 16, 0.75, StepCache(bb, batch, progress(25)).generator)
    tt, ts = objective.teacher_temp, 0.1
    with torch.no_grad():
        visible = bb.student_vision.forward_tokens(crop, ids_keep=ids_keep)
        predicted = naive_decoder(objective.decoder, visible, ids_keep, mask, bb.student_vision.pos_embed)
        full = bb.teacher_vision.forward_tokens(crop)  # the teacher sees the unmasked image
        total, targets = torch.zeros(()), []
        for b in range(4):
            per_patch = []
            for j in range(16):
                if not mask[b, j]:
                    continue
                t = objective.teacher_head(full[b, 1 + j])
                s = objective.head(predicted[b, j])
                targets.append(t)
                per_patch.append(soft_ce(softmax(row((t - center0[0]) / tt)), row(s / ts)))
            assert len(per_patch) == 12
            total = total + sum(per_patch) / len(per_patch)
    assert torch.allclose(out["loss"], total / 4, atol=1e-5)
    assert out["mask_ratio"].item() == pytest.approx(0.75)
    expected_center = 0.9 * center0 + 0.1 * torch.stack(targets).mean(0, keepdim=True)
    assert torch.allclose(objective.center, expected_center, atol=1e-6)


def test_masked_distill_scores_only_masked_patches():
    pipeline = build(["masked_distill"])
    pipeline.update_schedules(progress(25))
    objective = pipeline.objectives["masked_distill"]
    bb = pipeline.backbones
    batch = make_batch()
    center0 = objective.center.clone()
    step = StepCache(bb, batch, progress(25))
    _, mask, _ = random_masking(4, 16, 0.75, StepCache(bb, batch, progress(25)).generator)
    tokens = step.get("teacher_global_tokens").clone()

    def loss_with(teacher_tokens: torch.Tensor) -> torch.Tensor:
        objective.center.copy_(center0)
        forwards = SHARED_FORWARDS.with_compute("teacher_global_tokens", lambda step: teacher_tokens)
        return objective(StepCache(bb, batch, progress(25), forwards=forwards))["loss"].detach()

    reference = loss_with(tokens)
    noisy_visible = tokens.clone()
    noisy_visible[:4, 1:][~mask] = torch.randn(int((~mask).sum()), tokens.shape[-1])
    noisy_visible[4:] = torch.randn_like(noisy_visible[4:])  # global crop 2 is not used either
    assert torch.allclose(loss_with(noisy_visible), reference, atol=1e-6)
    b, j = (mask.nonzero()[0]).tolist()
    changed = tokens.clone()
    changed[b, 1 + j] = torch.randn(tokens.shape[-1]) * 3
    assert not torch.allclose(loss_with(changed), reference, atol=1e-4)


def test_masked_distill_validates_arguments():
    with pytest.raises(ValueError, match="mask_ratio"):
        ComposedPipeline(objectives=["masked_distill"], vision=TINY_VISION, masked_distill={"mask_ratio": 1.0})
    with pytest.raises(ValueError, match="divisible"):
        ComposedPipeline(objectives=["masked_distill"], vision=TINY_VISION, masked_distill={"decoder_heads": 3})


# -- configs --------------------------------------------------------------------------------------
METHODS = ("clip", "siglip", "ibot", "dino", "mae", "slip", "maskclip")
PRETRAIN = sorted(p for m in METHODS for p in (ROOT / "configs/pretrain" / m).glob("*.yaml"))
QUICKSTART = sorted(p for m in METHODS for p in (ROOT / "configs/quickstart").glob(f"{m}_*.yaml"))


def test_every_method_has_configs():
    assert {p.parent.name for p in PRETRAIN} == set(METHODS)
    assert {p.name.split("_")[0] for p in QUICKSTART} == set(METHODS)


def build_on_meta(cfg):
    # Parameters on the meta device: the whole construction runs (shapes, heads, teachers), no memory or init cost.
    with torch.device("meta"):
        return PIPELINES.build(cfg.pipeline)


@pytest.mark.parametrize("path", PRETRAIN + QUICKSTART, ids=lambda p: p.name)
def test_config_loads_and_builds(path):
    cfg = load_config(path)
    pipeline = build_on_meta(cfg)
    method = path.name.split("_")[0]
    if path in PRETRAIN:
        assert (cfg.epochs, cfg.batch_size, cfg.pipeline.vision.arch) == (25, 96, "vit_small")
        assert (cfg.pipeline.vision.img_size, cfg.pipeline.vision.patch_size) == (224, 16)
        assert cfg.optimizer.eps == 1e-6
        assert cfg.optimizer.betas == ([0.9, 0.95] if method == "mae" else [0.9, 0.98])
        assert str(cfg.output_dir).endswith(path.stem)
    expected_objectives = {
        "clip": {"clip": 1.0}, "siglip": {"clip": 1.0}, "ibot": {"ibot": 1.0}, "dino": {"dino": 1.0},
        "mae": {"mae": 1.0}, "slip": {"clip": 1.0, "simclr": 1.0}, "maskclip": MASKCLIP,
    }[method]
    assert pipeline.weights == expected_objectives
    assert pipeline.has_teachers == (method in ("ibot", "dino", "maskclip"))
    assert (pipeline.backbones.student_text is not None) == (method in ("clip", "siglip", "slip", "maskclip"))


def test_pretrain_recipes():
    def load(name: str):
        cfg = load_config(ROOT / "configs/pretrain" / name.split("_")[0] / f"{name}_vit_small_cc3m_25ep.yaml")
        return cfg, build_on_meta(cfg)

    cfg, p = load("clip")
    assert (cfg.optimizer.lr, cfg.optimizer.scale_lr, cfg.optimizer.weight_decay, cfg.optimizer.weight_decay_end) == (5e-4, False, 0.2, 0.2)
    assert cfg.transform.scale == [0.9, 1.0] and cfg.transform.hflip == 0.0 and cfg.grad_clip is None
    cfg, p = load("siglip")
    clip = p.objectives["clip"]
    assert clip.use_siglip and cfg.pipeline.clip.init_logit_scale == pytest.approx(math.log(10)) and cfg.pipeline.clip.init_logit_bias == -10
    cfg, p = load("ibot")
    assert cfg.transform.local_crops == 10 and (p.objectives["ibot"].loss.lambda1, p.objectives["ibot"].loss.lambda2) == (1.0, 1.0)
    cfg, p = load("dino")
    assert p.objectives["dino"].head.last_layer.weight.shape[0] == 65536 and cfg.transform.local_crops == 8
    cfg, p = load("mae")
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.weight_decay_end) == (1.5e-4, 0.05, 0.05)
    assert cfg.transform.name == "RandomResizedCropTransform" and cfg.transform.scale == [0.2, 1.0] and cfg.transform.hflip == 0.5
    assert not p.backbones.student_vision.pos_embed.requires_grad and p.objectives["mae"].crops == 1
    cfg, p = load("slip")
    assert cfg.transform.simclr_views == 2 and p.objectives["simclr"].loss.temperature == 0.1
    widths = [m.out_features for m in p.objectives["simclr"].head.mlp if isinstance(m, torch.nn.Linear)]
    assert widths == [4096, 4096, 256]
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in p.objectives["simclr"].head.mlp)
    cfg, p = load("maskclip")
    assert (cfg.pipeline.ema_momentum, cfg.pipeline.ema_momentum_end) == (0.999, 0.9999)
    md = p.objectives["masked_distill"]
    assert md.mask_ratio == 0.75 and len(md.decoder.blocks) == 1 and md.decoder.dim == 384


@pytest.mark.slow
@pytest.mark.parametrize("path", QUICKSTART, ids=lambda p: p.name)
def test_quickstart_trains_one_step_and_exports(path, tmp_path):
    from hirl_like.engine.dist_setup import init_distributed
    from hirl_like.engine.trainer import Trainer

    cfg = load_config(path)
    overrides = [f"output_dir={tmp_path}", "max_iterations=2", "batch_size=16", "num_workers=0",
                 "progress_bar=false", "tensorboard=false", "pipeline.vision.depth=1"]
    if cfg.pipeline.get("text"):
        overrides.append("pipeline.text.layers=1")
    summary = Trainer(load_config(path, overrides), init_distributed(device="cpu")).fit()
    assert summary["iterations"] == 2 and summary["skipped_steps"] == 0
    assert all(math.isfinite(v) for v in summary["final"].values())
    vision = cfg.pipeline.vision
    model = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=vision.img_size, patch_size=vision.patch_size, depth=1
    )
    model.load_state_dict(torch.load(tmp_path / "main_vit_checkpoint.pth", weights_only=True), strict=True)
