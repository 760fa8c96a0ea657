"""SSL baselines as objectives (mocov2, simsiam, swav, mocov3) and the pooled-feature forwards they
read, on a tiny ResNet-18 (and a tiny ViT for MoCo v3): each loss against a naive re-computation of
the paper's formula from the same modules, where gradients may flow, the queues, the exported
tower, DINO on a ResNet, and a few Trainer steps on the digits."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from hirl_like.config import load_config
from hirl_like.engine.checkpoint import load_checkpoint
from hirl_like.engine.dist_setup import init_distributed
from hirl_like.engine.trainer import Trainer
from hirl_like.models.resnet import create_timm_resnet
from hirl_like.pipelines.backbones import batch_statistics
from hirl_like.pipelines.composed import ComposedPipeline
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.schedules import Progress
from tests.losses._reference import dot, log_softmax, row, soft_ce, softmax
from tests.pipelines.conftest import TINY_OBJECTIVE_ARGS, TINY_TEXT, TINY_VISION, tiny_batch

pytestmark = pytest.mark.usefixtures("one_thread")

RESNET = {"name": "resnet18", "small_image_stem": True}
TINY_VIT16 = {"name": "vit", "arch": "vit_tiny", "img_size": 16, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}
ARGS = {
    "mocov2": {"dim": 8, "queue_size": 16, "projector_hidden_dims": [32]},
    "simsiam": {"dim": 16, "projector_hidden_dims": [32, 32], "predictor_hidden_dim": 8},
    "swav": {"dim": 8, "projector_hidden_dims": [32], "nmb_prototypes": 6},
    "mocov3": {"dim": 8, "projector_hidden_dims": [32, 32], "predictor_hidden_dims": [32]},
    "dino": {"out_dim": 16, "head_hidden_dim": 32, "head_bottleneck_dim": 8, "use_bn_in_head": True},
}
B = 4


def build(objectives, vision=RESNET, **args) -> ComposedPipeline:
    torch.manual_seed(0)
    node = {name: {**ARGS.get(name, {}), **args.get(name, {})} for name in objectives}
    pipeline = ComposedPipeline(objectives=list(objectives), vision=vision, ema_momentum=0.99, ema_momentum_end=0.99, **node)
    return pipeline.train()


def make_batch(local_crops: int = 1, seed: int = 0, size: int = 16) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "global_crops": [torch.randn(B, 3, size, size, generator=g) for _ in range(2)],
        "local_crops": [torch.randn(B, 3, size // 2, size // 2, generator=g) for _ in range(local_crops)],
    }


def progress(iteration: int = 25) -> Progress:
    return Progress(iteration, 10, 100, seed=0)  # 10 iterations per epoch


def run_step(pipeline: ComposedPipeline, batch: dict, iteration: int = 25) -> dict:
    pipeline.update_schedules(progress(iteration))
    return pipeline(batch)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def teacher_in_train_mode(module: nn.Module) -> nn.Module:
    """An independent copy of a teacher running as the reference key encoders do (train mode)."""
    return copy.deepcopy(module).train()


def bn_buffers(module: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in module.named_buffers() if "running" in n or "num_batches" in n]


# -- the pooled-feature forwards ----------------------------------------------------------------
def test_batch_statistics_uses_the_batch_and_keeps_running_stats():
    bn = nn.BatchNorm1d(3).eval()
    with torch.no_grad():
        bn.running_mean.fill_(5.0)
    x = torch.randn(6, 3) * 2 + 1
    before = bn_buffers(bn)
    with batch_statistics(bn):
        y = bn(x)
        assert bn.training
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps)
    assert torch.allclose(y, expected, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, bn_buffers(bn)))
    assert not bn.training and bn.track_running_stats
    with pytest.raises(RuntimeError), batch_statistics(bn):
        raise RuntimeError("restored even so")
    assert not bn.training and bn.track_running_stats
    with batch_statistics(bn, enabled=False):
        assert torch.allclose(bn(x), (x - 5.0) / math.sqrt(1 + bn.eps), atol=1e-5)


def test_resnet_feature_forwards():
    pipeline = build(["mocov2"])
    bb, batch = pipeline.backbones, make_batch()
    step = StepCache(bb, batch, progress())
    with torch.no_grad():
        student = step.get("student_global_features")
        assert student.shape == (2 * B, 512)
        assert torch.allclose(student, torch.cat([bb.student_vision(v) for v in batch["global_crops"]]), atol=1e-5)
        local = step.get("student_local_features")
        assert torch.allclose(local, bb.student_vision(batch["local_crops"][0]), atol=1e-5)
        before = bn_buffers(bb.teacher_vision)
        teacher = step.get("teacher_global_features")
        assert not teacher.requires_grad
        reference = teacher_in_train_mode(bb.teacher_vision)
        assert torch.allclose(teacher, torch.cat([reference(v) for v in batch["global_crops"]]), atol=1e-5)
        assert all(torch.equal(a, b) for a, b in zip(before, bn_buffers(bb.teacher_vision)))  # running stats untouched
        assert not any(m.training for m in bb.teacher_vision.modules())
        pipeline.eval()  # evaluating: the teacher uses its running statistics, like the student
        evaluated = StepCache(bb, batch, progress()).get("teacher_global_features")
        assert torch.allclose(evaluated, torch.cat([bb.teacher_vision(v) for v in batch["global_crops"]]), atol=1e-5)
        assert not torch.allclose(evaluated, teacher, atol=1e-3)  # the two modes do differ


def test_objectives_share_one_student_pass_per_crop():
    pipeline = build(["mocov2", "simsiam", "swav", "mocov3"])
    student = pipeline.backbones.student_vision
    calls = []
    student.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[-1]))
    out = run_step(pipeline, make_batch())
    assert calls == [16, 16, 8]  # two global crops, one local crop: once for all four objectives
    assert all(torch.isfinite(out[n]) for n in ("mocov2", "simsiam", "swav", "mocov3"))


def test_vit_features_read_the_token_forwards_so_dino_and_ibot_share_the_teacher_pass():
    torch.manual_seed(0)
    pipeline = ComposedPipeline(
        objectives=["dino", "ibot"], vision={**TINY_VISION, "mask_token": True},
        dino=ARGS["dino"] | {"use_bn_in_head": False}, ibot=TINY_OBJECTIVE_ARGS["ibot"],
    ).train()
    readers = pipeline.shared_forwards()
    assert readers["teacher_global_tokens"] == ["dino", "ibot"]
    assert readers["student_global_features"] == ["dino"] and readers["student_global_tokens"] == ["dino"]
    teacher = pipeline.backbones.teacher_vision
    calls = []
    original = teacher.forward_tokens
    teacher.forward_tokens = lambda x, **kw: calls.append(x.shape[0]) or original(x, **kw)
    out = run_step(pipeline, tiny_batch())
    assert calls == [8] and torch.isfinite(out["loss"])  # one teacher pass over both global crops
    step = StepCache(pipeline.backbones, tiny_batch(), progress())
    assert torch.equal(step.get("teacher_global_features"), step.get("teacher_global_tokens")[:, 0])
    assert torch.equal(step.get("student_global_features"), step.get("student_global_tokens")[:, 0])


# -- mocov2 -----------------------------------------------------------------------------------
def naive_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> torch.Tensor:
    """-1/B sum_b log( e^{q.k+/T} / (e^{q.k+/T} + sum_j e^{q.Q_j/T}) ), one row and one key at a time."""
    total = torch.zeros(())
    for b in range(q.shape[0]):
        logits = [dot(q[b], k[b]) / t] + [dot(q[b], queue[j]) / t for j in range(queue.shape[0])]
        total = total - log_softmax(logits)[0]
    return total / q.shape[0]


def mocov2_reference(pipeline, batch):
    """q of crop 0 and of the local crops, k_0 and k_1 (all L2-normalised), from the modules."""
    objective, bb = pipeline.objectives["mocov2"], pipeline.backbones
    crops = batch["global_crops"] + batch["local_crops"]
    q = [unit(objective.head(bb.student_vision(v))) for v in crops]
    key_encoder, key_head = teacher_in_train_mode(bb.teacher_vision), objective.teacher_head
    k = [unit(key_head(key_encoder(v))) for v in batch["global_crops"]]
    return q, k


def test_mocov2_matches_naive_infonce_with_local_queries_and_enqueues_the_keys():
    pipeline = build(["mocov2"])
    objective = pipeline.objectives["mocov2"]
    batch = make_batch(local_crops=1)
    queue0, ptr0 = objective.loss.queue.queue.clone(), int(objective.loss.queue.ptr)
    out = run_step(pipeline, batch)
    with torch.no_grad():
        q, k = mocov2_reference(pipeline, batch)
    expected = naive_infonce(q[0], k[1], queue0, 0.2) + naive_infonce(q[2], k[1], queue0, 0.2)  # local query vs k_1
    assert torch.allclose(out["mocov2"], expected, atol=1e-5)
    queue = objective.loss.queue
    assert int(queue.ptr) == ptr0 + B
    assert torch.allclose(queue.queue[:B], k[1], atol=1e-6) and torch.equal(queue.queue[B:], queue0[B:])

    out["loss"].backward()  # gradient: student and its head only; the key side gets none
    bb = pipeline.backbones
    assert bb.student_vision.model.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in objective.head.parameters())
    for module in (bb.teacher_vision, objective.teacher_head):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    assert not queue.queue.requires_grad
    with torch.no_grad():  # an SGD step on the query head, then the EMA moves the key head after it
        for p in objective.head.parameters():
            p.sub_(0.1 * p.grad)
    before = [p.clone() for p in objective.teacher_head.parameters()]
    pipeline.after_optimizer_step()
    for old, new, student in zip(before, objective.teacher_head.parameters(), objective.head.parameters()):
        assert not torch.equal(old, new) and torch.allclose(new, 0.99 * old + 0.01 * student, atol=1e-7)


def test_mocov2_symmetric_averages_both_directions_and_enqueues_both_keys():
    pipeline = build(["mocov2"], mocov2={"symmetric": True, "use_local_crops": False})
    objective = pipeline.objectives["mocov2"]
    batch = make_batch(local_crops=1)  # ignored: use_local_crops off
    queue0 = objective.loss.queue.queue.clone()
    out = run_step(pipeline, batch)
    with torch.no_grad():
        q, k = mocov2_reference(pipeline, batch)
    expected = (naive_infonce(q[0], k[1], queue0, 0.2) + naive_infonce(q[1], k[0], queue0, 0.2)) / 2
    assert torch.allclose(out["mocov2"], expected, atol=1e-5)
    assert int(objective.loss.queue.ptr) == 2 * B
    assert torch.allclose(objective.loss.queue.queue[: 2 * B], torch.cat([k[0], k[1]]), atol=1e-6)
    assert "student_local_features" not in pipeline.shared_forwards()


def test_mocov2_defaults_and_argument_errors():
    pipeline = ComposedPipeline(objectives=["mocov2"], vision=RESNET)
    objective = pipeline.objectives["mocov2"]
    widths = [(m.in_features, m.out_features) for m in objective.head.modules() if isinstance(m, nn.Linear)]
    assert widths == [(512, 512), (512, 128)]  # D -> D -> 128, no BatchNorm
    assert not any(isinstance(m, nn.BatchNorm1d) for m in objective.head.modules())
    assert objective.loss.queue.queue.shape == (65536, 128) and objective.loss.temperature == 0.2
    for bad, match in (({"queue_size": 0}, "queue_size"), ({"temperature": 0.0}, "temperature"),
                       ({"projector_hidden_dims": [0]}, "projector_hidden_dims")):
        with pytest.raises(ValueError, match=f"mocov2.{match}"):
            ComposedPipeline(objectives=["mocov2"], vision=RESNET, mocov2=bad)


# -- exported towers ------------------------------------------------------------------------
def test_exported_tower_is_the_student_for_moco_and_the_teacher_for_dino():
    for name in ("mocov2", "mocov3"):
        bb = build([name]).backbones
        assert bb.teacher_vision is not None and bb.exported_vision() is bb.student_vision, name
        bb.drop_teachers()
        assert bb.exported_vision() is bb.student_vision
    for name in ("simsiam", "swav"):
        pipeline = build([name])
        assert not pipeline.has_teachers and pipeline.export_vision() is pipeline.backbones.student_vision
    bb = build(["dino"]).backbones
    assert bb.exported_vision() is bb.teacher_vision  # unchanged for DINO/iBOT
    torch.manual_seed(0)
    with_text = ComposedPipeline(objectives=["clip", "mocov2"], vision=TINY_VISION, text=TINY_TEXT, embed_dim=32, mocov2=ARGS["mocov2"])
    bb = with_text.backbones
    assert bb.teacher_text is not None  # a teacher of one tower means a teacher of both
    assert bb.exported_text() == (bb.student_text, bb.image_projection)  # students pair with students
    assert with_text.export_vision() is bb.student_vision


# -- simsiam --------------------------------------------------------------------------------
def naive_simsiam(p1, p2, z1, z2) -> torch.Tensor:
    def d(p, z):  # -mean_b cos(p_b, z_b)
        cos = [dot(p[b], z[b]) / torch.sqrt(dot(p[b], p[b]) * dot(z[b], z[b])) for b in range(p.shape[0])]
        return -sum(cos) / len(cos)

    return d(p1, z2) / 2 + d(p2, z1) / 2


def test_simsiam_matches_naive_loss_and_stops_the_gradient_on_z():
    pipeline = build(["simsiam"])
    objective, student = pipeline.objectives["simsiam"], pipeline.backbones.student_vision
    assert not pipeline.has_teachers
    batch = make_batch(local_crops=0)
    out = run_step(pipeline, batch)
    out["loss"].backward()
    weight = [m for m in objective.projector.mlp if isinstance(m, nn.Linear)][-1].weight
    grad = weight.grad.clone()
    assert student.model.conv1.weight.grad.abs().sum() > 0

    z1, z2 = (objective.projector(student(v)) for v in batch["global_crops"])
    p1, p2 = objective.predictor(z1), objective.predictor(z2)
    with_sg = naive_simsiam(p1, p2, z1.detach(), z2.detach())
    assert torch.allclose(out["simsiam"], with_sg, atol=1e-5)
    (grad_sg,) = torch.autograd.grad(with_sg, weight, retain_graph=True)
    (grad_no_sg,) = torch.autograd.grad(naive_simsiam(p1, p2, z1, z2), weight)
    assert torch.allclose(grad, grad_sg, atol=1e-6)  # z reached only through the predictor
    assert not torch.allclose(grad, grad_no_sg, atol=1e-4)


def test_simsiam_heads_as_the_paper():
    objective = ComposedPipeline(objectives=["simsiam"], vision=RESNET).objectives["simsiam"]
    proj = list(objective.projector.mlp)
    assert [(m.in_features, m.out_features) for m in proj if isinstance(m, nn.Linear)] == [(512, 2048), (2048, 2048), (2048, 2048)]
    bns = [m for m in proj if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 3 and bns[-1].affine is False and not isinstance(proj[-1], nn.ReLU)
    pred = list(objective.predictor.mlp)
    assert [(m.in_features, m.out_features) for m in pred if isinstance(m, nn.Linear)] == [(2048, 512), (512, 2048)]
    assert isinstance(pred[1], nn.BatchNorm1d) and isinstance(pred[-1], nn.Linear)
    with pytest.raises(ValueError, match="simsiam.predictor_hidden_dim"):
        ComposedPipeline(objectives=["simsiam"], vision=RESNET, simsiam={"predictor_hidden_dim": -1})


# -- swav -------------------------------------------------------------------------------------
def naive_sinkhorn(scores: torch.Tensor, eps: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Q = exp(S/eps)^T / sum; per iteration rows (prototypes) to 1/K, then columns (samples) to 1/N;
    returns N * Q^T (rows sum to 1)."""
    q = torch.exp(scores.double() / eps).T.clone()
    q = q / q.sum()
    k, n = q.shape
    for _ in range(iterations):
        for i in range(k):
            q[i] = q[i] / q[i].sum() / k
        for j in range(n):
            q[:, j] = q[:, j] / q[:, j].sum() / n
    return (q * n).T


def naive_swav(scores: torch.Tensor, num_crops: int, targets: list[torch.Tensor], t: float = 0.1) -> torch.Tensor:
    """Codes of crops 0 and 1 predicted from every other crop: mean over c of 1/(V-1) sum_{v != c} H(q_c, p_v)."""
    crops = scores.double().view(num_crops, B, -1)
    total = torch.zeros((), dtype=torch.float64)
    for c in (0, 1):
        sub = torch.zeros((), dtype=torch.float64)
        for v in range(num_crops):
            if v != c:
                sub = sub + sum(soft_ce(row(targets[c][b]), row(crops[v, b] / t)) for b in range(B)) / B
        total = total + sub / (num_crops - 1)
    return total / 2


def swav_scores(objective, student, crops) -> tuple[torch.Tensor, torch.Tensor]:
    z = unit(objective.projector(torch.cat([student(v) for v in crops])))  # one head pass over all crops
    return z, z @ objective.prototypes.weight.T


def test_swav_matches_naive_sinkhorn_swapped_prediction_over_multi_crop():
    pipeline = build(["swav"])
    objective, student = pipeline.objectives["swav"], pipeline.backbones.student_vision
    with torch.no_grad():
        objective.prototypes.weight.mul_(3.0)
    batch = make_batch(local_crops=2)
    out = run_step(pipeline, batch)
    weight = objective.prototypes.weight
    assert torch.allclose(weight.norm(dim=1), torch.ones(6), atol=1e-6)  # normalised before the forward
    with torch.no_grad():
        _, scores = swav_scores(objective, student, batch["global_crops"] + batch["local_crops"])
        codes = [naive_sinkhorn(scores[c * B : (c + 1) * B]) for c in (0, 1)]
    assert torch.allclose(codes[0].sum(dim=1), torch.ones(B, dtype=torch.float64))
    assert torch.allclose(out["swav"].double(), naive_swav(scores, 4, codes), atol=1e-5)
    assert objective.loss.num_crops == 4 and "swav/queue_in_use" not in out


def test_swav_freezes_prototypes_then_trains_them():
    pipeline = build(["swav"])
    objective = pipeline.objectives["swav"]
    run_step(pipeline, make_batch(), iteration=3)["loss"].backward()
    assert objective.prototypes.weight.grad is not None
    pipeline.before_optimizer_step()  # epoch 0.3 < freeze_prototypes = 1
    assert objective.prototypes.weight.grad is None
    assert objective.projector.mlp[0].weight.grad is not None
    pipeline.zero_grad()
    run_step(pipeline, make_batch(), iteration=15)["loss"].backward()
    pipeline.before_optimizer_step()
    assert objective.prototypes.weight.grad is not None


def test_swav_queue_starts_fills_and_enters_the_codes():
    pipeline = build(["swav"], swav={"queue_length": 2 * B, "epoch_queue_starts": 1})
    objective, student = pipeline.objectives["swav"], pipeline.backbones.student_vision
    loss = objective.loss
    batch = make_batch(local_crops=0)
    run_step(pipeline, batch, iteration=5)  # epoch 0.5: before the queue starts
    assert int(loss.queue_filled) == 0 and not loss.queue.any()
    out = run_step(pipeline, batch, iteration=10)
    assert int(loss.queue_filled) == B and out["swav/queue_in_use"] == 0
    with torch.no_grad():
        z, _ = swav_scores(objective, student, batch["global_crops"])
    assert torch.allclose(loss.queue[0, :B], z[:B], atol=1e-5) and torch.allclose(loss.queue[1, :B], z[B:], atol=1e-5)
    run_step(pipeline, batch, iteration=11)
    queue = loss.queue.clone()  # full now: the next step's codes see it
    out = run_step(pipeline, batch, iteration=12)
    assert out["swav/queue_in_use"] == 1
    with torch.no_grad():
        _, scores = swav_scores(objective, student, batch["global_crops"])
        past = [queue[i] @ objective.prototypes.weight.T for i in (0, 1)]
        codes = [naive_sinkhorn(torch.cat([past[c], scores[c * B : (c + 1) * B]]))[-B:] for c in (0, 1)]
    assert torch.allclose(out["swav"].double(), naive_swav(scores, 2, codes), atol=1e-5)
    with pytest.raises(ValueError, match="swav.queue_length"):
        build(["swav"], swav={"queue_length": -1})
    with pytest.raises(ValueError, match="swav.freeze_prototypes"):
        build(["swav"], swav={"freeze_prototypes": "110%"})


# -- mocov3 -----------------------------------------------------------------------------------
def naive_ctr(q: torch.Tensor, k: torch.Tensor, t: float) -> torch.Tensor:
    """2T * -1/B sum_b log softmax_j(q_b . k_j / T)[b], normalised q and k."""
    q, k = unit(q), unit(k)
    total = torch.zeros(())
    for b in range(q.shape[0]):
        total = total - log_softmax([dot(q[b], k[j]) / t for j in range(k.shape[0])])[b]
    return 2 * t * total / q.shape[0]


@pytest.mark.parametrize("vision", [RESNET, TINY_VIT16], ids=["resnet18", "vit"])
def test_mocov3_matches_naive_symmetric_contrastive_loss(vision):
    pipeline = build(["mocov3"], vision=vision)
    objective, bb = pipeline.objectives["mocov3"], pipeline.backbones
    batch = make_batch(local_crops=0)
    out = run_step(pipeline, batch)
    with torch.no_grad():
        q1, q2 = (objective.predictor(objective.projector(bb.student_vision(v))) for v in batch["global_crops"])
        encoder, projector = teacher_in_train_mode(bb.teacher_vision), teacher_in_train_mode(objective.teacher_projector)
        k1, k2 = (projector(encoder(v)) for v in batch["global_crops"])
    expected = naive_ctr(q1, k2, 0.2) + naive_ctr(q2, k1, 0.2)
    assert torch.allclose(out["mocov3"], expected, atol=1e-5)
    assert 0 <= out["mocov3/acc"] <= 100
    out["loss"].backward()
    assert all(p.grad is not None for p in objective.predictor.parameters())
    for module in (bb.teacher_vision, objective.teacher_projector):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    assert pipeline.export_vision() is bb.student_vision
    assert not any(m.training for m in objective.teacher_projector.modules())  # still eval after the step


def test_mocov3_heads_and_frozen_patch_embedding():
    objective = ComposedPipeline(objectives=["mocov3"], vision=TINY_VIT16).objectives["mocov3"]
    proj = list(objective.projector.mlp)
    assert [m.out_features for m in proj if isinstance(m, nn.Linear)] == [4096, 4096, 256]
    assert isinstance(proj[-1], nn.BatchNorm1d) and not proj[-1].affine
    pred = list(objective.predictor.mlp)
    assert [m.out_features for m in pred if isinstance(m, nn.Linear)] == [4096, 256]
    assert isinstance(pred[-1], nn.BatchNorm1d) and not pred[-1].affine
    assert objective.loss.temperature == 0.2

    pipeline = build(["mocov3"], vision=TINY_VIT16, mocov3={"freeze_patch_embed": True})
    vit = pipeline.backbones.student_vision
    assert not any(p.requires_grad for p in vit.patch_embed.parameters())
    run_step(pipeline, make_batch(local_crops=0))["loss"].backward()
    assert all(p.grad is None for p in vit.patch_embed.parameters())
    assert vit.blocks[0].attn.qkv.weight.grad is not None
    assert all(p.requires_grad for p in pipeline.grad_norm_parameters())
    with pytest.raises(ValueError, match="freeze_patch_embed"):
        build(["mocov3"], mocov3={"freeze_patch_embed": True})  # a ResNet has no patch projection


# -- dino on a ResNet ----------------------------------------------------------------------------
def test_dino_runs_on_a_resnet_with_the_pooled_features():
    pipeline = build(["dino"])
    objective, bb = pipeline.objectives["dino"], pipeline.backbones
    batch = make_batch(local_crops=1)
    out = run_step(pipeline, batch)
    with torch.no_grad():  # the heads see every crop at once (their BatchNorm too), the backbone one crop at a time
        crops = batch["global_crops"] + batch["local_crops"]
        student = objective.head(torch.cat([bb.student_vision(v) for v in crops])).chunk(3)
        encoder, head = teacher_in_train_mode(bb.teacher_vision), teacher_in_train_mode(objective.teacher_head)
        teacher = head(torch.cat([encoder(v) for v in batch["global_crops"]])).chunk(2)
    t_t = objective.teacher_temp
    total, pairs = torch.zeros(()), 0
    for q, t_q in enumerate(teacher):
        for v, s_v in enumerate(student):
            if v != q:
                pairs += 1
                total = total + sum(soft_ce(softmax(row(t_q[b] / t_t)), row(s_v[b] / 0.1)) for b in range(B)) / B
    assert torch.allclose(out["dino"], total / pairs, atol=1e-5)
    assert pipeline.export_vision() is bb.teacher_vision


# -- Trainer ----------------------------------------------------------------------------------
TRAIN_ARGS = {
    "mocov2": {"dim": 16, "queue_size": 64},
    "simsiam": {"dim": 64, "projector_hidden_dims": [64, 64], "predictor_hidden_dim": 16},
    "swav": {"dim": 16, "projector_hidden_dims": [64], "nmb_prototypes": 20},
    "mocov3": {"dim": 16, "projector_hidden_dims": [64, 64], "predictor_hidden_dims": [64]},
}


@pytest.mark.parametrize("name", sorted(TRAIN_ARGS))
def test_trainer_runs_three_steps_on_digits(tmp_path, name):
    config = {
        "output_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": 8, "num_workers": 0, "max_iterations": 3,
        "progress_bar": False, "tensorboard": False, "log_interval": 1,
        "optimizer": {"lr": 1.0e-3, "warmup_epochs": 0},
        "data": {"name": "Digits", "split": "train", "image_size": 16},
        "transform": {"name": "MultiCropTransform", "global_crops": 2, "local_crops": 1, "global_size": 16,
                      "local_size": 8, "hflip": 0.0, "color_jitter_p": 0.0},
        "pipeline": {"name": "Composed", "objectives": [name], "vision": RESNET, "text": None,
                     "ema_momentum": 0.99, "ema_momentum_end": 0.99, name: TRAIN_ARGS[name]},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = Trainer(load_config(path), init_distributed(device="cpu")).fit()
    assert summary["iterations"] == 3 and summary["skipped_steps"] == 0
    assert all(math.isfinite(v) for v in summary["final"].values())
    assert math.isfinite(summary["final"]["loss"])
    exported = torch.load(tmp_path / "run/main_vit_checkpoint.pth", weights_only=True)
    create_timm_resnet("resnet18", small_image_stem=True).load_state_dict(exported, strict=True)
    state = load_checkpoint(tmp_path / "run/checkpoint.pth")["model"]
    student = state["backbones.student_vision.model.conv1.weight"]
    assert torch.equal(exported["conv1.weight"], student)  # no teacher, or MoCo: the student is exported
    if name in ("mocov2", "mocov3"):
        assert not torch.equal(state["backbones.teacher_vision.model.conv1.weight"], student)
