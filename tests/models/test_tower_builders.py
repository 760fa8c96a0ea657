"""Towers picked by name from model builders (hirl_like/models/builders): widths, LiT locking,
LoRA, the Hugging Face poolers, name and download refusals, local pretrained files, heads."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

import hirl_like.models  # noqa: F401  (registers the towers)
from hirl_like.data.tokenizer import ClipTokenizer, caption_lengths
from hirl_like.models.builders.projection import DINOProjection, build_projection_head, check_head
from hirl_like.models.builders.timm_tower import create_timm_network
from hirl_like.models.builders.torchvision_tower import create_torchvision_network
from hirl_like.registry import MODELS, RegistryError
from tests.models.tower_nodes import (
    BERT, HF_TEXT, OPEN_CLIP_RN, OPEN_CLIP_TEXT, OPEN_CLIP_VIT, TIMM_RESNET, TIMM_VIT, TORCHVISION,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

E = 24  # the joint space of the text towers here
LOCKED_RANDOM = pytest.mark.filterwarnings("ignore:.*lock=true with pretrained=null")  # locking random towers on purpose
CAPTIONS = ["a photo of the zero", "a digit", "the number seven in ink"]  # L = 8 of a 16 context


def tokens(captions: list[str] = CAPTIONS, context: int = 16) -> torch.Tensor:
    return ClipTokenizer(context, pad_to="batch")(captions)


def build(node: dict, **extra) -> nn.Module:
    torch.manual_seed(0)
    return MODELS.build(copy.deepcopy(node), **extra)


def step(module: nn.Module, loss: torch.Tensor) -> None:
    """One AdamW step (weight decay on) over the trainable parameters."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    loss.backward()
    optimizer.step()


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------
# widths
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("node, size, width", [
    (TIMM_VIT, 32, 32), (TIMM_RESNET, 32, 512), (TORCHVISION, 32, 512), (OPEN_CLIP_VIT, 32, 24), (OPEN_CLIP_RN, 64, 40),
], ids=["timm_vit", "timm_resnet", "torchvision", "open_clip_vit", "open_clip_rn"])
def test_image_towers_give_features_of_their_declared_width(node, size, width, one_thread):
    tower = build(node).eval()
    assert tower.embed_dim == width
    assert tower(torch.randn(2, 3, size, size)).shape == (2, width)
    assert not callable(getattr(tower, "forward_tokens", None))  # a pooled-feature tower for the pipeline


@pytest.mark.parametrize("node", [OPEN_CLIP_TEXT, HF_TEXT], ids=["open_clip", "huggingface"])
def test_text_towers_give_the_joint_width_and_token_features(node, one_thread):
    tower = build(node, embed_dim=E).eval()
    ids = tokens()
    assert tower(ids).shape == (3, E) and tower.embed_dim == E
    assert tower.forward_tokens(ids, causal=False).shape == (3, ids.shape[1], tower.width)
    assert tower.valid_mask(ids).sum(1).tolist() == caption_lengths(ids).tolist()
    assert tower.context_length == 16 and tower.vocab_size == 49408


def test_open_clip_name_builds_the_tower_of_its_node(one_thread):
    from hirl_like.models.builders.open_clip_text import OpenClipTextTower
    from hirl_like.models.builders.open_clip_vision import OpenClipVisionTower

    assert isinstance(build(OPEN_CLIP_VIT), OpenClipVisionTower)
    assert isinstance(build(OPEN_CLIP_TEXT, embed_dim=E), OpenClipTextTower)  # the pipeline passes embed_dim to text
    with pytest.raises(ValueError, match="img_size"):
        build({**OPEN_CLIP_TEXT, "img_size": 32}, embed_dim=E)


def test_open_clip_text_is_causal_by_default_and_bidirectional_on_request(one_thread):
    tower = build(OPEN_CLIP_TEXT, embed_dim=E).eval()
    ids = tokens()
    causal, both = tower.forward_tokens(ids), tower.forward_tokens(ids, causal=False)
    changed = ids.clone()
    changed[:, 3] = 320  # a later word
    assert torch.allclose(tower.forward_tokens(changed)[:, :3], causal[:, :3], atol=1e-6)  # left context only
    assert not torch.allclose(tower.forward_tokens(changed, causal=False)[:, :3], both[:, :3], atol=1e-4)
    longer = torch.nn.functional.pad(ids, (0, 8))  # more padding changes no real position, either mode
    valid = tower.valid_mask(ids)
    assert torch.allclose(tower.forward_tokens(longer, causal=False)[:, : ids.shape[1]][valid], both[valid], atol=1e-5)


# ------------------------------------------------------------------------------------------
# LiT locking
# ------------------------------------------------------------------------------------------
@LOCKED_RANDOM
@pytest.mark.parametrize("node", [TIMM_RESNET, TORCHVISION, OPEN_CLIP_RN], ids=["timm", "torchvision", "open_clip"])
def test_a_locked_image_tower_gets_no_gradient_and_stays_bit_identical(node, one_thread):
    tower = build({**node, "lock": True})
    tower.train()
    assert not tower.model.training  # kept in eval mode: BatchNorm statistics frozen
    before = snapshot(tower)  # running means and variances included
    size = 64 if node is OPEN_CLIP_RN else 32
    features = tower(torch.randn(4, 3, size, size))
    assert not features.requires_grad
    assert not any(p.requires_grad for p in tower.parameters())
    head = build_projection_head({"type": "linear"}, tower.embed_dim, 8)
    step(head, head(features).pow(2).mean())  # the head trains on the locked features
    after = snapshot(tower)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in tower.modules())


@LOCKED_RANDOM
def test_a_locked_text_tower_gets_no_gradient_and_its_head_trains(one_thread):
    tower = build({**HF_TEXT, "lock": True}, embed_dim=E)
    tower.train()
    before = snapshot(tower.model)
    head_before = snapshot(tower.head)
    step(tower, tower(tokens()).pow(2).mean())
    assert all(p.grad is None for p in tower.model.parameters())
    assert all(torch.equal(v, tower.model.state_dict()[k]) for k, v in before.items())
    assert not all(torch.equal(v, tower.head.state_dict()[k]) for k, v in head_before.items())
    assert not tower.model.training


def test_locking_a_random_tower_warns():
    with pytest.warns(UserWarning, match="random initialisation"):
        build({**TIMM_VIT, "lock": True})


# ------------------------------------------------------------------------------------------
# LoRA
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("node, kind", [(TIMM_VIT, "vision"), (OPEN_CLIP_VIT, "vision"), (HF_TEXT, "text")],
                         ids=["timm", "open_clip", "huggingface"])
def test_lora_trains_only_the_adapter_weights(node, kind, one_thread):
    plain = build(node, **({"embed_dim": E} if kind == "text" else {})).eval()
    tower = build({**node, "adapter": "lora", "lora": {"r": 2, "alpha": 4}}, **({"embed_dim": E} if kind == "text" else {}))
    tower.eval()
    x = tokens() if kind == "text" else torch.randn(2, 3, 32, 32)
    network = tower.model
    trainable = [n for n, p in network.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(p.requires_grad for p in network.parameters()) == sum("lora_" in n for n, _ in network.named_parameters())
    out = tower(x)
    reference = plain(x) if kind == "vision" else plain.forward_tokens(x)
    got = out if kind == "vision" else tower.forward_tokens(x)
    assert torch.allclose(got, reference, atol=1e-5)  # B = 0: the adapted tower starts as the base tower
    base = {k: v for k, v in snapshot(network).items() if "lora_" not in k}
    adapters = {k: v for k, v in snapshot(network).items() if "lora_" in k}
    tower.train()
    step(tower, (tower(x) - 1).pow(2).mean())
    now = network.state_dict()
    assert all(torch.equal(v, now[k]) for k, v in base.items())
    assert any(not torch.equal(v, now[k]) for k, v in adapters.items())


def test_lora_without_layers_to_adapt_is_refused():
    with pytest.raises(ValueError, match="target_modules"):
        build({**TORCHVISION, "adapter": "lora"})
    with pytest.raises(ValueError, match="adapter"):
        build({**TIMM_VIT, "adapter": "lorra"})


# ------------------------------------------------------------------------------------------
# Hugging Face poolers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooler", ["cls", "mean", "eos"])
def test_hf_pooler_matches_a_naive_computation(pooler, one_thread):
    tower = build({**HF_TEXT, "pooler": pooler}, embed_dim=E).eval()
    ids = tokens()
    features = tower.forward_tokens(ids)
    lengths = caption_lengths(ids).tolist()  # SOT .. EOT
    naive = []
    for i, n in enumerate(lengths):
        rows = features[i, :n]
        naive.append({"cls": rows[0], "mean": rows.sum(0) / n, "eos": rows[n - 1]}[pooler])
    assert torch.allclose(tower.pool(features, ids), torch.stack(naive), atol=1e-6)
    longer = torch.nn.functional.pad(ids, (0, 8))  # padding is masked out of attention and pooling
    assert torch.allclose(tower(longer), tower(ids), atol=1e-5)


def test_hf_tower_refuses_a_vocabulary_too_small_for_the_clip_bpe_and_misspelt_config_keys():
    with pytest.raises(ValueError, match="49408"):
        build({**HF_TEXT, "config": {**BERT, "vocab_size": 1000}}, embed_dim=E)
    with pytest.raises(ValueError, match="'num_hidden_layers'"):
        build({**HF_TEXT, "config": {**BERT, "num_hiden_layers": 1}}, embed_dim=E)
    with pytest.raises(ValueError, match="bert"):
        build({**HF_TEXT, "config": {**BERT, "model_type": "bertt"}}, embed_dim=E)


def test_hf_tower_with_a_local_tokenizer_directory(tmp_path, one_thread):
    from transformers import BertTokenizerFast

    from hirl_like.data.hf_tokenizer import HFTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "the", "number", "zero", "digit"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tok")
    tokenizer = HFTokenizer(str(tmp_path / "tok"), context_length=16)
    ids = tokenizer(["a photo of the number zero", "a digit"])
    assert ids.shape == (2, 16) and ids[0, 0].item() == 2 and ids[1, 3].item() == 3  # [CLS] .. [SEP] [PAD]
    tower = build({**HF_TEXT, "config": {**BERT, "vocab_size": len(words)}, "tokenizer": str(tmp_path / "tok"),
                   "pooler": "eos"}, embed_dim=E).eval()
    assert tower.valid_mask(ids).sum(1).tolist() == [8, 4]
    features = tower.forward_tokens(ids)
    assert torch.allclose(tower.pool(features, ids), features[[0, 1], [7, 3]])
    with pytest.raises(ValueError, match="Hub id"):
        build({**HF_TEXT, "tokenizer": "bert-base-uncased"}, embed_dim=E)


def test_hf_tower_refuses_the_attention_mode_it_does_not_have(one_thread):
    tower = build(HF_TEXT, embed_dim=E)
    with pytest.raises(ValueError, match="causal"):
        tower.forward_tokens(tokens(), causal=True)


# ------------------------------------------------------------------------------------------
# names and downloads
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("node, typo, close", [
    (TIMM_VIT, "vit_tiny_patch16_244", "vit_tiny_patch16_224"),
    (TORCHVISION, "resnet81", "resnet18"),
    (OPEN_CLIP_VIT, "ViT-B-23", "ViT-B-32"),
], ids=["timm", "torchvision", "open_clip"])
def test_an_unknown_model_name_lists_the_close_names(node, typo, close):
    with pytest.raises(ValueError, match=close) as err:
        build({**node, "model": typo})
    assert typo in str(err.value) and "Close names" in str(err.value)


def test_an_unknown_builder_name_lists_the_close_names():
    with pytest.raises(RegistryError, match="timm"):
        MODELS.build({"name": "timn", "model": "resnet18"})
    with pytest.raises(RegistryError, match="huggingface"):
        MODELS.build({"name": "hugingface"}, embed_dim=E)


@pytest.mark.parametrize("node, tag", [
    (TIMM_VIT, "augreg_in21k"), (OPEN_CLIP_VIT, "openai"), (OPEN_CLIP_TEXT, "laion2b_s34b_b79k"), (TORCHVISION, "IMAGENET1K_V1"),
], ids=["timm", "open_clip", "open_clip_text", "torchvision"])
def test_a_pretrained_tag_that_needs_a_download_is_refused(node, tag):
    extra = {"embed_dim": E} if node is OPEN_CLIP_TEXT else {}
    with pytest.raises(ValueError, match="downloaded") as err:
        build({**node, "pretrained": tag}, **extra)
    assert "LOCAL" in str(err.value) and "nothing is downloaded" in str(err.value)
    with pytest.raises(ValueError, match="downloaded"):
        build({**node, "pretrained": True}, **extra)


def test_a_hub_id_for_a_hf_tower_is_refused():
    with pytest.raises(ValueError, match="Hub id"):
        build({"name": "huggingface", "pretrained": "bert-base-uncased"}, embed_dim=E)
    with pytest.raises(ValueError, match="Hub id"):
        build({"name": "huggingface", "config": "google/bert_uncased_L-2_H-128_A-2"}, embed_dim=E)


def test_a_missing_local_file_is_not_taken_for_a_tag(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such local file"):
        build({**TIMM_VIT, "pretrained": str(tmp_path / "weights.pth")})


# ------------------------------------------------------------------------------------------
# local pretrained files
# ------------------------------------------------------------------------------------------
def _assert_weights(tower: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = tower.model.state_dict()
    assert set(own) == set(state)
    assert all(torch.equal(own[k], state[k]) for k in state)


def test_a_local_timm_file_is_loaded_nested_prefixed_with_its_classifier(tmp_path, one_thread):
    torch.manual_seed(1)
    source = create_timm_network("vit_tiny_patch16_224", 32, model_kwargs=TIMM_VIT["model_kwargs"])
    state = source.state_dict()
    file = tmp_path / "vit.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, file)
    # a checkpoint saved with its classifier: the tower has none, so the head is dropped
    torch.save({**state, "head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10)}, tmp_path / "cls.pth")
    _assert_weights(build({**TIMM_VIT, "pretrained": str(file)}), state)
    _assert_weights(build({**TIMM_VIT, "pretrained": str(tmp_path / "cls.pth")}), state)
    tower = build({**TIMM_VIT, "pretrained": str(file), "adapter": "lora"})  # loaded before the adapters go in
    assert torch.equal(tower.model.blocks[0].attn.qkv.base_layer.weight, state["blocks.0.attn.qkv.weight"])


def test_a_local_file_of_another_model_is_refused_with_the_keys(tmp_path):
    torch.save(create_timm_network("resnet18").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="missing"):
        build({**TIMM_VIT, "pretrained": str(tmp_path / "resnet.pth")})


def test_a_local_torchvision_file_is_loaded(tmp_path, one_thread):
    import torchvision

    torch.manual_seed(2)
    full = torchvision.models.resnet18(weights=None)  # with its fc classifier, as torchvision saves it
    torch.save(full.state_dict(), tmp_path / "r18.pth")
    state = {k: v for k, v in full.state_dict().items() if not k.startswith("fc.")}
    _assert_weights(build({**TORCHVISION, "pretrained": str(tmp_path / "r18.pth")}), state)
    network, width = create_torchvision_network("mobilenet_v3_small")
    assert width == 1024 and network.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1024)


def test_a_local_open_clip_checkpoint_gives_both_towers_their_weights(tmp_path, one_thread):
    torch.manual_seed(3)
    vision = build(OPEN_CLIP_VIT).model.state_dict()
    text = build(OPEN_CLIP_TEXT, embed_dim=E).model.state_dict()
    clip = {**{"visual." + k: v for k, v in vision.items()}, **text, "logit_scale": torch.tensor(4.6)}
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in clip.items()}, str(tmp_path / "clip.safetensors"))
    torch.manual_seed(4)  # other random weights underneath
    _assert_weights(build({**OPEN_CLIP_VIT, "pretrained": str(tmp_path / "clip.safetensors")}), vision)
    _assert_weights(build({**OPEN_CLIP_TEXT, "pretrained": str(tmp_path / "clip.safetensors")}, embed_dim=E), text)


def test_a_local_hf_checkpoint_directory_is_loaded(tmp_path, one_thread):
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(5)
    values = dict(BERT)
    source = AutoModel.from_config(AutoConfig.for_model(values.pop("model_type"), **values), add_pooling_layer=False)
    source.save_pretrained(tmp_path / "bert")
    tower = build({"name": "huggingface", "pretrained": str(tmp_path / "bert"), "context_length": 16}, embed_dim=E)
    _assert_weights(tower, source.state_dict())


# ------------------------------------------------------------------------------------------
# heads
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", [None, {"type": "linear"}, {"type": "mlp", "hidden_dim": 16, "layers": 3},
                                  {"type": "dino", "hidden_dim": 16, "prototypes": 7}, {"type": "dino", "layers": 1}])
def test_projection_heads_map_the_tower_width_to_the_joint_space(head):
    module = build_projection_head(head, 12, 6)
    out = module(torch.randn(5, 12))
    assert out.shape == (5, 6) and (module.in_features, module.out_features) == (12, 6)
    if isinstance(module, DINOProjection):
        assert torch.allclose(out.norm(dim=-1), torch.ones(5))
        if module.prototypes is not None:
            scores = module.prototype_scores(torch.randn(5, 12))
            assert scores.shape == (5, 7) and scores.abs().max() <= 1 + 1e-6  # unit rows, unit input: cosines
    if head is None or head["type"] == "linear":
        assert isinstance(module, nn.Linear) and module.bias is None


def test_head_nodes_are_checked():
    assert build_projection_head({"type": "none"}, 6, 6)(torch.ones(1, 6)).tolist() == [[1.0] * 6]
    with pytest.raises(ValueError, match="embed_dim"):
        build_projection_head({"type": "none"}, 6, 8)
    with pytest.raises(ValueError, match="'mlp'"):
        check_head({"type": "mpl"})
    with pytest.raises(ValueError, match="hidden_dim"):
        check_head({"type": "mlp", "hiden_dim": 3})
    with pytest.raises(ValueError, match="prototypes"):
        check_head({"type": "linear", "prototypes": 3})
