"""hirl_like.export, train-free: export -> load gives the in-memory pipeline's features and
zero-shot logits bit for bit, from the exports and from a full checkpoint alike."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from hirl_like.export import (
    TEXT_EXPORT_NAME,
    VISION_EXPORT_NAME,
    load_text_tower,
    load_vision_backbone,
    text_export,
    write_exports,
)
from hirl_like.evaluation.zeroshot import build_zeroshot_classifier
from hirl_like.registry import PIPELINES

VISION = {"name": "vit", "arch": "vit_tiny", "img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}
TEXT = {"name": "text_transformer", "width": 64, "layers": 2, "heads": 2, "context_length": 16}
IBOT = {"out_dim": 64, "patch_out_dim": 64, "head_hidden_dim": 32, "head_bottleneck_dim": 16}
CLASSNAMES = ["zero", "one", "two", "three"]
TEMPLATES = ["a photo of the number {}.", "the digit {}."]


def _pipeline_config(objectives: list[str]) -> dict:
    node = {"name": "Harmony", "objectives": objectives, "vision": VISION, "embed_dim": 32, "ibot": IBOT}
    if "clip" in objectives:
        node |= {"text": TEXT, "clip": {"soft_targets": False}}
    return node


def _pipeline(objectives: list[str], seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """A tiny pipeline whose teachers differ from their students (as after training)."""
    torch.manual_seed(seed)
    node = _pipeline_config(objectives)
    pipeline = PIPELINES.build(copy.deepcopy(node))
    with torch.no_grad():
        for p in pipeline.parameters():
            p.add_(0.02 * torch.randn_like(p))  # teachers and students drift apart
        if "clip" in pipeline.objectives:
            pipeline.objectives["clip"].logit_scale.fill_(2.5)
    return pipeline.eval(), node


def _full_checkpoint(pipeline: torch.nn.Module, node: dict, path) -> None:
    """What the trainer's checkpoint.pth holds that matters to a reader: the state and the config."""
    torch.save({"model": pipeline.state_dict(), "config": {"pipeline": node}, "iteration": 3}, path)


def _images(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def clip_ibot(tmp_path_factory):
    """A CLIP + iBOT pipeline (EMA vision teacher, no text teacher), its exports and its full checkpoint."""
    folder = tmp_path_factory.mktemp("clip_ibot")
    pipeline, node = _pipeline(["clip", "ibot"])
    paths = write_exports(pipeline, folder)
    _full_checkpoint(pipeline, node, folder / "checkpoint.pth")
    return pipeline, paths, folder


def test_write_exports_keeps_todays_files_and_formats(clip_ibot):
    pipeline, paths, folder = clip_ibot
    assert paths == {"vision": folder / VISION_EXPORT_NAME, "text": folder / TEXT_EXPORT_NAME}
    vision = torch.load(paths["vision"], weights_only=True)
    teacher = pipeline.backbones.teacher_vision
    assert vision.keys() == teacher.export_state_dict().keys() and "mask_token" not in vision
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in vision.items())  # the teacher, not the student
    timm_vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=2,
                                 embed_dim=64, num_heads=2)
    timm_vit.load_state_dict(vision, strict=True)

    text = torch.load(paths["text"], weights_only=True)
    assert set(text) == {"text", "image_projection", "text_config", "embed_dim", "logit_scale", "tokenizer"}
    assert text["tokenizer"] == {"name": "clip_bpe", "context_length": 16}
    assert text["text_config"] == TEXT and text["embed_dim"] == 32
    assert text["logit_scale"] == pytest.approx(torch.tensor(2.5).exp().item())
    # The image projection pairs with the exported (teacher) ViT.
    assert torch.equal(text["image_projection"], pipeline.backbones.teacher_image_projection.weight)
    # Byte-compatible with what the trainer wrote before write_exports existed.
    before = pipeline.export_text() | {"tokenizer": {"name": "clip_bpe", "context_length": 16}}
    assert text.keys() == before.keys() and torch.equal(text["image_projection"], before["image_projection"])
    assert all(torch.equal(v, before["text"][k]) for k, v in text["text"].items())


@pytest.mark.parametrize("source", ["export", "checkpoint.pth"])
def test_round_trip_gives_identical_features_and_zero_shot_logits(clip_ibot, source):
    pipeline, paths, folder = clip_ibot
    images = _images()
    vit = pipeline.export_vision()
    text, projection = pipeline.backbones.exported_text()
    with torch.no_grad():
        features = vit(images)  # (5, 64)
        classifier = build_zeroshot_classifier(lambda t: text(t), load_text_tower(paths["text"]).tokenizer,
                                               CLASSNAMES, TEMPLATES)  # (4, 32)
        logits = F.normalize(projection(features), dim=-1) @ classifier.T  # (5, 4)

    vision_path = paths["vision"] if source == "export" else folder / "checkpoint.pth"
    text_path = paths["text"] if source == "export" else folder / "checkpoint.pth"
    model, note = load_vision_backbone(vision_path, VISION)
    tower = load_text_tower(text_path, vision_width=64)
    with torch.no_grad():
        loaded = model(images)
    loaded_classifier = build_zeroshot_classifier(tower.encode_text, tower.tokenizer, CLASSNAMES, TEMPLATES)
    assert torch.equal(loaded, features)
    assert torch.equal(loaded_classifier, classifier)
    assert torch.equal(tower.encode_image(loaded) @ loaded_classifier.T, logits)
    assert tower.logit_scale == pytest.approx(torch.tensor(2.5).exp().item())
    if source == "checkpoint.pth":
        assert note.endswith("[model:backbones.teacher_vision.]")


def test_prefix_flags_read_a_full_checkpoint_by_key(clip_ibot):
    pipeline, _, folder = clip_ibot
    student, note = load_vision_backbone(folder / "checkpoint.pth", VISION, "model", "backbones.student_vision.")
    with torch.no_grad():
        assert torch.equal(student(_images()), pipeline.backbones.student_vision(_images()))
    assert note.endswith("[model:backbones.student_vision.]")


def test_towers_student_reads_the_students_of_the_run(clip_ibot, tmp_path):
    """--towers student: the student ViT, the student text tower and the student image projection,
    whichever file of the run is named; the teachers stay the default."""
    pipeline, paths, folder = clip_ibot
    b = pipeline.backbones
    images = _images()
    for named in (paths["vision"], folder / "checkpoint.pth"):
        vit, note = load_vision_backbone(named, VISION, towers="student")
        tower = load_text_tower(named, vision_width=64, towers="student")
        with torch.no_grad():
            assert torch.equal(vit(images), b.student_vision(images))
            assert not torch.equal(vit(images), b.teacher_vision(images))
            assert torch.equal(tower.encode_image(vit(images)), F.normalize(b.image_projection(b.student_vision(images)), dim=-1))
        assert torch.equal(tower.text.state_dict()["token_embedding.weight"], b.student_text.state_dict()["token_embedding.weight"])
        assert note.endswith("[model:backbones.student_vision.]")
    lone = tmp_path / "lone"
    lone.mkdir()
    write_exports(pipeline, lone)  # exports without their checkpoint.pth
    with pytest.raises(FileNotFoundError, match="--towers student reads the students"):
        load_vision_backbone(lone / VISION_EXPORT_NAME, VISION, towers="student")
    with pytest.raises(ValueError, match="drop --model_prefix"):
        load_vision_backbone(folder / "checkpoint.pth", VISION, "model", towers="student")
    with pytest.raises(ValueError, match="choose one of exported, student"):
        load_vision_backbone(folder / "checkpoint.pth", VISION, towers="teacher")


def test_loading_leaves_the_global_rng_alone(clip_ibot):
    _, _, folder = clip_ibot
    state = torch.get_rng_state()
    load_vision_backbone(folder / "checkpoint.pth")
    load_text_tower(folder / "checkpoint.pth")
    assert torch.equal(torch.get_rng_state(), state)


def test_image_only_pipeline_exports_no_text(tmp_path):
    pipeline, node = _pipeline(["ibot"])
    assert text_export(pipeline) is None
    assert write_exports(pipeline, tmp_path) == {"vision": tmp_path / VISION_EXPORT_NAME}
    assert not (tmp_path / TEXT_EXPORT_NAME).exists()
    _full_checkpoint(pipeline, node, tmp_path / "checkpoint.pth")
    model, _ = load_vision_backbone(tmp_path / "checkpoint.pth")
    with torch.no_grad():
        assert torch.equal(model(_images()), pipeline.export_vision()(_images()))
    with pytest.raises(ValueError, match="without a text tower"):
        load_text_tower(tmp_path / "checkpoint.pth")


def test_text_tower_is_loaded_strictly_and_checked_against_the_backbone(clip_ibot, tmp_path):
    _, paths, _ = clip_ibot
    payload = torch.load(paths["text"], weights_only=True)
    del payload["text"]["ln_final.weight"]
    payload["text"]["extra.bias"] = torch.zeros(3)
    torch.save(payload, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"(?s)missing keys.*ln_final.weight.*unexpected keys.*extra.bias"):
        load_text_tower(tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="another run"):
        load_text_tower(paths["text"], vision_width=384)
    with pytest.raises(ValueError, match="not a text checkpoint"):
        load_text_tower(paths["vision"])
    payload = torch.load(paths["text"], weights_only=True) | {"tokenizer": {"name": "sentencepiece"}}
    torch.save(payload, tmp_path / "other_tokenizer.pth")
    with pytest.raises(ValueError, match="names tokenizer .*sentencepiece.*supported: clip_bpe"):
        load_text_tower(tmp_path / "other_tokenizer.pth")


def test_bad_input_is_a_one_line_error(clip_ibot, tmp_path):
    pipeline, paths, folder = clip_ibot
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_vision_backbone(tmp_path / "nowhere.pth", VISION)
    with pytest.raises(ValueError, match="without its architecture"):
        load_vision_backbone(paths["vision"])
    # Another architecture: one block more than the export has.
    with pytest.raises(ValueError, match=r"missing keys .*blocks\.2\."):
        load_vision_backbone(paths["vision"], VISION | {"depth": 3})
    # A full checkpoint whose state does not fit the config stored with it.
    state = torch.load(folder / "checkpoint.pth", weights_only=True)
    state["config"]["pipeline"]["vision"] = VISION | {"depth": 3}
    torch.save(state, tmp_path / "mismatch.pth")
    with pytest.raises(ValueError, match="does not fit the stored config"):
        load_vision_backbone(tmp_path / "mismatch.pth")
    state["config"]["pipeline"] = {"name": "NoSuchPipeline"}
    torch.save(state, tmp_path / "unknown.pth")
    with pytest.raises(ValueError, match="cannot rebuild its pipeline.*--model_prefix model"):
        load_vision_backbone(tmp_path / "unknown.pth")
