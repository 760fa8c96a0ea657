"""The image-text distiller objectives (vl_*) in the composed pipeline on tiny towers: gradients reach
the towers they should (and none reaches the teacher of a uni-directional distiller), the term equals
its loss on the shared embeddings, state survives a state_dict round trip, and a prototype
distiller without prototypes is refused with the key to set."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from hirl_like.pipelines.composed import ComposedPipeline, parse_objectives
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.schedules import Progress
from tests.pipelines.conftest import TINY_TEXT, TINY_VISION, tiny_batch

ARGS = {
    "vl_simreg": {"predictor_hidden_dims": [16]},
    "vl_simreg_l1": {"predictor_hidden_dims": [16]},
    "vl_simreg_smoothl1": {"predictor_hidden_dims": [16]},
    "vl_vicreg": {},
    "vl_barlowtwins": {"projector_hidden_dims": [16], "projector_dim": 8},
    "vl_rkd": {},
    "vl_compress_1q": {"queue_size": 16},
    "vl_compress_2q": {"queue_size": 16},
    "vl_seed": {"queue_size": 16},
    "vl_dino": {"num_prototypes": 16},
    "vl_protocpc": {"num_prototypes": 16},
    "vl_infonce": {},
    "vl_protoclip": {"projection_dim": 8, "projection_hidden_dims": [16], "num_prototypes": 2, "episode_size": 8,
                     "kmeans_restarts": 1},
}
UNI_DIRECTIONAL = ["vl_compress_1q", "vl_seed", "vl_dino", "vl_protocpc"]
BI_DIRECTIONAL = ["vl_simreg", "vl_simreg_l1", "vl_simreg_smoothl1", "vl_vicreg", "vl_barlowtwins", "vl_compress_2q",
                  "vl_infonce", "vl_protoclip"]
ALL = sorted(ARGS)


def build(name: str, **overrides) -> ComposedPipeline:
    torch.manual_seed(0)
    args = {**ARGS[name], **overrides}
    return ComposedPipeline(objectives=[name], vision=TINY_VISION, text=TINY_TEXT, embed_dim=32, **{name: args})


def step(pipeline: ComposedPipeline, iteration: int = 0, seed: int = 0) -> dict:
    pipeline.update_schedules(Progress(iteration, 10, 100))
    return pipeline(tiny_batch(seed=seed))


def grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters() if p.requires_grad]


def has_gradient(module: torch.nn.Module) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in grads(module))


def test_all_thirteen_are_registered_and_read_from_an_objective_string():
    assert len(ALL) == 13
    assert list(parse_objectives("clip_vl_simreg_l1_vl_seed")) == ["clip", "vl_simreg_l1", "vl_seed"]


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_trains_the_image_side_and_the_objective(name):
    pipeline = build(name)
    pipeline.train()
    out = step(pipeline)
    assert torch.isfinite(out["loss"]) and torch.allclose(out["loss"], out[name])
    out["loss"].backward()
    assert has_gradient(pipeline.backbones.student_vision) and has_gradient(pipeline.backbones.image_projection)
    own = list(pipeline.objectives[name].parameters())
    assert not own or has_gradient(pipeline.objectives[name]), "the objective's heads/prototypes/scales get gradients"


@pytest.mark.parametrize("name", UNI_DIRECTIONAL + ["vl_rkd"])
def test_uni_directional_distillers_pass_no_gradient_to_the_text_side(name):
    pipeline = build(name)
    pipeline.train()
    step(pipeline)["loss"].backward()
    assert all(g is None or g.abs().sum() == 0 for g in grads(pipeline.backbones.student_text))
    assert has_gradient(pipeline.backbones.student_vision)


@pytest.mark.parametrize("name", UNI_DIRECTIONAL)
def test_with_the_image_as_teacher_the_image_side_gets_none(name):
    pipeline = build(name, teacher="image")
    pipeline.train()
    step(pipeline)["loss"].backward()
    assert all(g is None or g.abs().sum() == 0 for g in grads(pipeline.backbones.student_vision))
    assert has_gradient(pipeline.backbones.student_text)


@pytest.mark.parametrize("name", BI_DIRECTIONAL)
def test_bi_directional_distillers_train_both_towers(name):
    pipeline = build(name)
    pipeline.train()
    for it in range(3):  # vl_protoclip: the prototype term starts after the first episode
        pipeline.zero_grad()
        out = step(pipeline, iteration=it, seed=it)
        out["loss"].backward()
    assert has_gradient(pipeline.backbones.student_text) and has_gradient(pipeline.backbones.student_vision)


@pytest.mark.parametrize("name", ["vl_simreg", "vl_vicreg", "vl_compress_2q"])
def test_detach_teacher_freezes_the_text_side(name):
    pipeline = build(name, detach_teacher=True)
    pipeline.train()
    step(pipeline)["loss"].backward()
    assert all(g is None for g in grads(pipeline.backbones.student_text))


def shared_embeddings(pipeline: ComposedPipeline, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    cache = StepCache(pipeline.backbones, batch, Progress(0, 10, 100))
    return cache.get("student_image_embedding"), cache.get("student_text_embedding")


@pytest.mark.parametrize("name", ["vl_simreg", "vl_vicreg", "vl_barlowtwins", "vl_rkd", "vl_compress_2q", "vl_seed"])
def test_term_is_the_loss_of_the_shared_embeddings(name):
    pipeline = build(name)
    pipeline.eval()  # BatchNorm in heads: running statistics, so two calls give the same outputs
    objective = pipeline.objectives[name]
    loss_before = copy.deepcopy(objective.loss)  # queues as they were before the step
    batch = tiny_batch()
    pipeline.update_schedules(Progress(0, 10, 100))
    got = pipeline(batch)[name]
    image, text = shared_embeddings(pipeline, batch)
    with torch.no_grad():
        if name.startswith("vl_simreg"):
            image = objective.predictor(image)
        elif name in ("vl_vicreg", "vl_barlowtwins"):
            image, text = objective.student_projector(image), objective.teacher_projector(text)
        want = loss_before(image, text)["loss"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_cross_modal_dino_scores_text_against_the_image_heads_prototypes():
    pipeline = build("vl_dino")
    pipeline.eval()
    objective = pipeline.objectives["vl_dino"]
    batch = tiny_batch()
    pipeline.update_schedules(Progress(0, 10, 100))
    cache = StepCache(pipeline.backbones, batch, Progress(0, 10, 100)).scoped("t", objective.requires(), (), "")
    student, teacher = objective.scores(cache)
    image, text = shared_embeddings(pipeline, batch)
    w = F.normalize(objective.head.last_layer.weight, dim=1)
    torch.testing.assert_close(teacher, F.normalize(text, dim=1) @ w.T)
    torch.testing.assert_close(student, F.normalize(objective.head.mlp(image), dim=1) @ w.T)
    assert not teacher.requires_grad


@pytest.mark.parametrize("name", ["vl_dino", "vl_protocpc"])
@pytest.mark.parametrize("value", [None, 0])
def test_prototype_distillers_refuse_a_config_without_a_prototype_layer(name, value):
    with pytest.raises(ValueError, match=rf"set pipeline\.{name}\.num_prototypes"):
        build(name, num_prototypes=value)


def test_teacher_temperature_warms_up_linearly():
    pipeline = build("vl_dino", warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=2)
    values = pipeline.update_schedules(Progress(10, 10, 100))  # epoch 1 of a 2-epoch warm-up
    assert values["vl_dino/teacher_temp"] == pytest.approx(0.055)


STATE = {
    "vl_compress_1q": ["loss.teacher_queue.queue", "loss.teacher_queue.ptr"],
    "vl_compress_2q": ["loss.student_queue.queue", "loss.teacher_queue.queue"],
    "vl_seed": ["loss.queue.queue", "loss.queue.ptr"],
    "vl_dino": ["loss.center", "head.last_layer.weight"],
    "vl_protocpc": ["loss.prior", "head.last_layer.weight"],
    "vl_protoclip": ["loss.memory.image", "loss.memory.text", "loss.memory.fresh", "loss.image_centroids",
                     "loss.text_centroids", "loss.image_students", "loss.text_students", "loss.episodes"],
}


@pytest.mark.parametrize("name", sorted(STATE))
def test_queue_centre_prior_and_prototypes_are_in_the_checkpoint(name):
    pipeline = build(name)
    pipeline.train()
    for it in range(3):
        step(pipeline, iteration=it, seed=it)
    state = pipeline.state_dict()
    keys = [f"objectives.{name}.{k}" for k in STATE[name]]
    assert set(keys) <= set(state)
    fresh = build(name)
    assert any(not torch.equal(fresh.state_dict()[k], state[k]) for k in keys)
    fresh.load_state_dict(state, strict=True)
    for k in keys:
        assert torch.equal(fresh.state_dict()[k], state[k]), k
    pipeline.eval(), fresh.eval()
    torch.testing.assert_close(step(fresh, 3, seed=5)["loss"], step(pipeline, 3, seed=5)["loss"])


def test_protoclip_builds_prototypes_after_an_episode_and_clamps_both_scales():
    pipeline = build("vl_protoclip")  # 4 pairs per step, episodes of 8 pairs
    pipeline.train()
    outs = [step(pipeline, iteration=it, seed=it) for it in range(3)]
    assert [o["vl_protoclip/episodes"].item() for o in outs] == [0.0, 0.0, 1.0]
    assert outs[0]["vl_protoclip/proto"].item() == 0.0 and outs[2]["vl_protoclip/proto"].item() > 0.0
    torch.testing.assert_close(outs[0]["vl_protoclip"], outs[0]["vl_protoclip/infonce"])
    objective = pipeline.objectives["vl_protoclip"]
    assert objective.loss.text_centroids.abs().sum() > 0
    with torch.no_grad():
        objective.logit_scale.fill_(10.0), objective.logit_scale_proto.fill_(-1.0)
    pipeline.after_optimizer_step()
    assert objective.logit_scale.item() == pytest.approx(math.log(100)) and objective.logit_scale_proto.item() == 0.0


def test_a_bad_teacher_names_the_key():
    with pytest.raises(ValueError, match=r"pipeline\.vl_seed\.teacher"):
        build("vl_seed", teacher="audio")
