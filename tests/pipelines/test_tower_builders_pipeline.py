"""Builder towers inside the CLIP pipeline: a training step, LiT and LoRA under the engine's
optimizer groups, export and reload through the evaluation path, config checks."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from hirl_like.config import ConfigError, load_config
from hirl_like.engine.optim import param_groups
from hirl_like.export import load_text_tower, load_vision_backbone, write_exports
from hirl_like.registry import PIPELINES
from tests.models.tower_nodes import BERT, OPEN_CLIP_TEXT, OPEN_CLIP_VIT, TIMM_RESNET, TIMM_VIT, TORCHVISION
from tests.pipelines.conftest import TINY_TEXT

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

E = 16
HF = {"name": "huggingface", "config": BERT, "context_length": 16, "pooler": "mean", "embed_dim": E}
TOWERS = {
    "timm+huggingface": (TIMM_VIT, HF),
    "open_clip+open_clip": (OPEN_CLIP_VIT, {**OPEN_CLIP_TEXT, "embed_dim": E}),
    "torchvision+text_transformer": (TORCHVISION, {**TINY_TEXT, "embed_dim": E}),
}
LOCKED_RANDOM = pytest.mark.filterwarnings("ignore:.*lock=true with pretrained=null")


def clip_pipeline(vision: dict, text: dict, **clip) -> nn.Module:
    torch.manual_seed(0)
    node = {"name": "CLIP", "vision": copy.deepcopy(vision), "text": copy.deepcopy(text), "embed_dim": E}
    if clip:
        node["clip"] = clip
    return PIPELINES.build(node)


def image_caption_batch(batch_size: int = 4, size: int = 32) -> dict:
    from tests.pipelines.conftest import tiny_batch

    batch = tiny_batch(batch_size, local_crops=0)
    batch["global_crops"] = [torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(1))]
    return batch


def train_step(pipeline: nn.Module, batch: dict) -> dict:
    """One step as the trainer takes it: the engine's parameter groups (trainable only), AdamW with weight decay."""
    pipeline.train()
    optimizer = torch.optim.AdamW(param_groups(pipeline), lr=1e-2, weight_decay=0.1)
    out = pipeline(batch)
    out["loss"].backward()
    optimizer.step()
    pipeline.after_optimizer_step()
    return out


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> list[str]:
    now = module.state_dict()
    return [k for k, v in before.items() if not torch.equal(v, now[k])]


@pytest.mark.parametrize("towers", list(TOWERS), ids=list(TOWERS))
def test_a_clip_step_trains_builder_towers_and_their_heads(towers, one_thread):
    vision, text = TOWERS[towers]
    pipeline = clip_pipeline(vision, text)
    backbones = pipeline.backbones
    before = {name: snapshot(m) for name, m in (("vision", backbones.student_vision), ("text", backbones.student_text),
                                                 ("projection", backbones.image_projection))}
    out = train_step(pipeline, image_caption_batch())
    assert torch.isfinite(out["loss"])
    assert all(changed(state, getattr(backbones, {"vision": "student_vision", "text": "student_text",
                                                  "projection": "image_projection"}[name]))
               for name, state in before.items())


def test_default_towers_keep_their_bias_free_linear_projection():
    from tests.pipelines.conftest import TINY_VISION

    projection = clip_pipeline(TINY_VISION, {**TINY_TEXT, "embed_dim": E}).backbones.image_projection
    assert type(projection) is nn.Linear and projection.bias is None and projection.weight.shape == (E, 64)


@LOCKED_RANDOM
def test_lit_keeps_the_locked_image_tower_bit_identical(one_thread):
    pipeline = clip_pipeline({**TIMM_RESNET, "lock": True}, HF)
    vision = pipeline.backbones.student_vision
    before, text_before, head_before = snapshot(vision), snapshot(pipeline.backbones.student_text), \
        snapshot(pipeline.backbones.image_projection)
    trainable = {id(p) for group in param_groups(pipeline) for p in group["params"]}
    assert not any(id(p) in trainable for p in vision.parameters())  # the optimizer never sees the tower
    train_step(pipeline, image_caption_batch())
    assert vision.training and not vision.model.training  # the pipeline trains; the locked network stays in eval
    assert changed(before, vision) == []  # weights and BatchNorm running statistics alike
    assert all(p.grad is None for p in vision.parameters())
    assert changed(text_before, pipeline.backbones.student_text) and changed(head_before, pipeline.backbones.image_projection)


def test_lora_towers_train_only_their_adapters_and_heads(one_thread):
    pipeline = clip_pipeline({**TIMM_VIT, "adapter": "lora"}, {**HF, "adapter": "lora", "lora": {"r": 2}})
    backbones = pipeline.backbones
    for tower in (backbones.student_vision, backbones.student_text):
        names = [n for n, p in tower.model.named_parameters() if p.requires_grad]
        assert names and all("lora_" in n for n in names)
        base = {k: v for k, v in snapshot(tower.model).items() if "lora_" not in k}
        tower.base_before = base  # type: ignore[attr-defined]
    train_step(pipeline, image_caption_batch())
    for tower in (backbones.student_vision, backbones.student_text):
        now = tower.model.state_dict()
        assert all(torch.equal(v, now[k]) for k, v in tower.base_before.items())


# ------------------------------------------------------------------------------------------
# export and reload through the evaluation path
# ------------------------------------------------------------------------------------------
EXPORTS = {
    "timm+huggingface": (TIMM_VIT, HF),
    "timm_mlp_head+huggingface": ({**TIMM_VIT, "head": {"type": "mlp", "hidden_dim": 16}},
                                  {**HF, "head": {"type": "dino", "hidden_dim": 16, "layers": 2}}),
    "timm_lora+huggingface_lora": ({**TIMM_VIT, "adapter": "lora"}, {**HF, "adapter": "lora"}),
    "open_clip+open_clip": TOWERS["open_clip+open_clip"],
}


@pytest.mark.parametrize("towers", list(EXPORTS), ids=list(EXPORTS))
def test_exports_reload_through_the_evaluation_path(towers, tmp_path, one_thread):
    vision, text = EXPORTS[towers]
    pipeline = clip_pipeline(vision, text)
    batch = image_caption_batch()
    train_step(pipeline, batch)
    pipeline.eval()
    paths = write_exports(pipeline, tmp_path)
    # the eval scripts read pipeline.vision from the run's config.yaml (an OmegaConf node)
    OmegaConf.save(OmegaConf.create({"pipeline": {"vision": vision, "text": text}}), tmp_path / "config.yaml")
    cfg = OmegaConf.load(tmp_path / "config.yaml")
    backbone, _ = load_vision_backbone(paths["vision"], cfg.pipeline.vision)
    images = batch["global_crops"][0]
    with torch.no_grad():
        features = pipeline.export_vision()(images)
        assert torch.allclose(backbone(images), features, atol=1e-6)
        tower = load_text_tower(paths["text"], vision_width=backbone.embed_dim)
        text_model = pipeline.backbones.student_text
        assert torch.allclose(tower.encode_text(batch["text"]), text_model(batch["text"]), atol=1e-5)
        image = F.normalize(pipeline.backbones.image_projection(features), dim=-1)
        assert torch.allclose(tower.encode_image(features), image, atol=1e-6)


@LOCKED_RANDOM
def test_a_reload_needs_no_pretrained_file(tmp_path, one_thread):
    from hirl_like.models.builders.timm_tower import create_timm_network

    weights = tmp_path / "vit.pth"
    torch.save(create_timm_network("vit_tiny_patch16_224", 32, model_kwargs=TIMM_VIT["model_kwargs"]).state_dict(), weights)
    vision = {**TIMM_VIT, "pretrained": str(weights), "lock": True}
    pipeline = clip_pipeline(vision, HF).eval()
    paths = write_exports(pipeline, tmp_path / "run")
    expected = pipeline.export_vision().model.state_dict()
    weights.unlink()  # the run moved to a machine without the pretrained file
    backbone, _ = load_vision_backbone(paths["vision"], vision)
    assert all(torch.equal(v, expected[k]) for k, v in backbone.model.state_dict().items())
    with pytest.raises(FileNotFoundError):
        clip_pipeline(vision, HF)  # training, however, needs it


def test_a_hf_tokenizer_directory_reaches_the_data_and_the_export(tmp_path, one_thread):
    from transformers import BertTokenizerFast

    from hirl_like.data.build import text_tokenizer
    from hirl_like.data.hf_tokenizer import HFTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "the", "number", "zero", "digit"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tok")
    text = {**HF, "config": {**BERT, "vocab_size": len(words)}, "tokenizer": str(tmp_path / "tok")}
    cfg = OmegaConf.create({"pipeline": {"text": text}})
    tokenizer = text_tokenizer(cfg)
    assert isinstance(tokenizer, HFTokenizer) and tokenizer.context_length == 16
    pipeline = clip_pipeline(TIMM_VIT, text)
    batch = image_caption_batch()
    batch["text"] = tokenizer(["a photo of the number zero", "a digit", "the number", "zero"])
    out = pipeline(batch)
    assert torch.isfinite(out["loss"])
    pipeline.eval()
    paths = write_exports(pipeline, tmp_path / "run")
    tower = load_text_tower(paths["text"])
    assert isinstance(tower.tokenizer, HFTokenizer)
    with torch.no_grad():
        assert torch.allclose(tower.encode_text(batch["text"]), pipeline.backbones.student_text(batch["text"]), atol=1e-5)


# ------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------
QUICKSTART = "configs/quickstart/vl_openclip_hf_tiny_digits.yaml"


def test_the_quickstart_loads_and_names_open_clip_and_huggingface():
    cfg = load_config(QUICKSTART)
    assert cfg.pipeline.vision.name == "open_clip" and cfg.pipeline.text.name == "huggingface"


@pytest.mark.parametrize("override, message", [
    ("pipeline.text.pooler=max", "pooler"),
    ("pipeline.vision.lock=maybe", "lock"),
    ("+pipeline.vision.embed_dim=64", "embed_dim"),
    ("pipeline.vision.head.type=mpl", "mlp"),
])
def test_wrong_tower_arguments_are_refused_at_load_time(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(QUICKSTART, [override])


def test_an_image_tower_argument_in_an_open_clip_text_node_is_refused_at_load_time(tmp_path):
    cfg = OmegaConf.load(QUICKSTART)
    cfg.pipeline.text = {"name": "open_clip", "model": "ViT-B-32", "context_length": 32, "img_size": 32, "embed_dim": 64}
    OmegaConf.save(cfg, tmp_path / "run.yaml")
    with pytest.raises(ConfigError, match="img_size"):
        load_config(tmp_path / "run.yaml")
