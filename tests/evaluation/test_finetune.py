"""Fine-tuning parts against naive references: layer-decay lr scales, the mixup / smoothing loss,
drop path, the head, and the class-balanced label subsets (tiny models, no data files)."""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from hirl_like.evaluation.finetune import LabelSubset, batch_loss, build_criterion, effective_batch_size, finetune
from hirl_like.evaluation.finetune_model import FineTuneClassifier, lr_scales, parameter_groups, set_drop_path
from hirl_like.evaluation.finetune_recipe import (
    RESNET_RECIPE,
    VIT_RECIPE,
    TrainTransform,
    default_recipe,
    is_grey,
    posterize_keep_bits,
)
from hirl_like.evaluation.semisup import class_balanced_subset, read_indices, subset_record, write_indices
from hirl_like.models.resnet import ResNet
from hirl_like.models.vit import VisionTransformer

DEPTH, DECAY, C = 4, 0.65, 10


def _vit(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer("vit_tiny", img_size=32, patch_size=8, **{"depth": DEPTH, **kwargs})


# ------------------------------------------------------------------------------------------------
# layer-wise lr decay
# ------------------------------------------------------------------------------------------------


def _naive_layer_id(name: str) -> int:
    """BEiT's get_num_layer_for_vit, with timm's placement of the final norm (the last block)."""
    if name.startswith(("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed")):
        return 0
    block = re.match(r"backbone\.blocks\.(\d+)\.", name)
    if block:
        return int(block.group(1)) + 1
    if name.startswith("backbone.norm."):
        return DEPTH  # timm: group_matcher's (r'^norm', (99999,)) joins the last block
    assert name.startswith("head."), name
    return DEPTH + 1


def test_layer_decay_gives_block_i_base_times_decay_to_the_depth_minus_i():
    model = FineTuneClassifier(_vit(mask_token=True), C)
    groups = parameter_groups(model, weight_decay=0.05, layer_decay=DECAY)
    scales = lr_scales(model, groups)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(scales) == sorted(trainable) and "backbone.mask_token" not in scales  # unused: frozen
    for name in trainable:
        layer_id = _naive_layer_id(name)
        assert scales[name] == pytest.approx(DECAY ** (DEPTH + 1 - layer_id)), name
        block = re.match(r"backbone\.blocks\.(\d+)\.", name)
        if block:  # the form: base * 0.65 ** (depth - i)
            assert scales[name] == pytest.approx(DECAY ** (DEPTH - int(block.group(1)))), name
    for name in ("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.weight"):
        assert scales[name] == pytest.approx(DECAY ** (DEPTH + 1))
    assert scales["head.weight"] == scales["head.bias"] == 1.0


def test_weight_decay_spares_biases_norms_and_tokens():
    model = FineTuneClassifier(_vit(), C)
    params = dict(model.named_parameters())
    for group in parameter_groups(model, weight_decay=0.05, layer_decay=DECAY):
        for p in group["params"]:
            name = next(n for n, q in params.items() if q is p)
            no_decay = p.ndim <= 1 or name in ("backbone.cls_token", "backbone.pos_embed")
            assert group["weight_decay"] == (0.0 if no_decay else 0.05), name


def test_resnet_groups_have_no_layer_decay():
    torch.manual_seed(0)
    model = FineTuneClassifier(ResNet("resnet18", small_image_stem=True), C)
    scales = lr_scales(model, parameter_groups(model, weight_decay=0.0, layer_decay=None))
    assert set(scales.values()) == {1.0} and len(scales) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="ResNet fine-tunes without it"):
        parameter_groups(model, weight_decay=0.0, layer_decay=0.65)


def test_sincos_position_embeddings_are_fine_tuned():
    model = FineTuneClassifier(_vit(pos_embed="sincos"), C)
    assert model.backbone.pos_embed.requires_grad  # MAE's fine-tuning learns them


# ------------------------------------------------------------------------------------------------
# the head, drop path, the transform
# ------------------------------------------------------------------------------------------------


def test_head_is_the_same_for_any_backbone_and_reads_the_cls_token():
    a, b = FineTuneClassifier(_vit(), C, head_init_std=2e-5, seed=3), FineTuneClassifier(_vit(depth=2), C, head_init_std=2e-5, seed=3)
    assert torch.equal(a.head.weight, b.head.weight) and not a.head.bias.any()
    assert a.head.weight.abs().max() <= 4e-5  # truncated at 2 std
    x = torch.randn(2, 3, 32, 32)
    a.eval()
    assert torch.allclose(a(x), a.head(a.backbone(x)))  # the backbone's forward is its [CLS] feature
    avg = FineTuneClassifier(a.backbone, C, pool="avg").eval()
    assert torch.allclose(avg.features(x), a.backbone.forward_tokens(x)[:, 1:].mean(dim=1))


def test_drop_path_follows_timms_linear_rule():
    vit = _vit()
    set_drop_path(vit, 0.1)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in vit.blocks]
    assert rates == pytest.approx([0.1 * i / (DEPTH - 1) for i in range(DEPTH)])
    assert isinstance(vit.blocks[0].drop_path1, nn.Identity)


def test_train_transform_gives_normalised_images_and_survives_posterize_at_magnitude_10():
    from PIL import Image

    recipe = replace(default_recipe(True, 32), auto_augment="rand-n3-m10-inc1")  # posterize keeps 0 bits at m10
    transform = TrainTransform(recipe, 32)
    img = Image.fromarray((np.arange(32 * 32) % 256).astype(np.uint8).reshape(32, 32)).convert("RGB")
    random.seed(0)
    np.random.seed(0)
    for _ in range(30):
        out = transform(img)["image"]
        assert out.shape == (3, 32, 32) and torch.isfinite(out).all()
    ops = [op for t in transform.transform.transforms for op in getattr(t, "ops", ())]
    posterize = [op for op in ops if op.name.startswith("Posterize")]
    assert posterize and all(op.aug_fn is posterize_keep_bits for op in posterize)
    assert posterize_keep_bits(img, 0).getextrema() == ((0, 0),) * 3  # old Pillow: 0 bits kept = black
    assert default_recipe(True, 32).crop_scale == (0.5, 1.0) and default_recipe(True, 224).crop_scale == (0.08, 1.0)
    assert default_recipe(False, 224, hflip=0.0).hflip == 0.0 and default_recipe(False, 224, epochs=None).epochs == 60


def test_grey_data_get_grey_erasing_noise():
    from PIL import Image

    from hirl_like.data.digits import DigitsDataset

    recipe = replace(default_recipe(True, 32), auto_augment=None, re_prob=1.0, grey=True)
    transform = TrainTransform(recipe, 32)
    img = Image.fromarray(np.full((32, 32), 128, dtype=np.uint8)).convert("RGB")
    plain = transform(img)["image"] * transform.std + transform.mean  # (3, 32, 32) in [0, 1]-ish
    assert torch.allclose(plain[0], plain[1], atol=1e-5) and torch.allclose(plain[1], plain[2], atol=1e-5)
    assert (plain - 128 / 255).abs().max() > 0.1  # the erased block is there, as grey noise
    colour = TrainTransform(replace(recipe, grey=False), 32)(img)["image"] * transform.std + transform.mean
    assert not torch.allclose(colour[0], colour[1], atol=1e-3)  # timm's own erasing: colour noise
    assert is_grey(DigitsDataset(split="val"))

    class Colour:
        def __len__(self) -> int:
            return 2

        def load(self, i: int):
            return Image.new("RGB", (4, 4), (200, 10, 10)), 0

    assert not is_grey(Colour())


# ------------------------------------------------------------------------------------------------
# the loss of a batch
# ------------------------------------------------------------------------------------------------


def _linear_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, C))


def _naive_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits - torch.log(torch.exp(logits).sum(dim=1, keepdim=True))


def test_mixup_cutmix_loss_equals_a_naive_soft_target_cross_entropy():
    model, b, eps = _linear_model(), 8, VIT_RECIPE.label_smoothing
    mixup, criterion = build_criterion(VIT_RECIPE, C)
    constants = torch.arange(1.0, b + 1)  # image i is the constant i + 1, so lambda shows in its mean
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    kinds = set()
    for seed in range(12):
        np.random.seed(seed)
        images = constants.view(b, 1, 1, 1).expand(b, 3, 8, 8).clone()
        out = batch_loss(model, images, labels, mixup, criterion)
        first = out.images[0]
        lam = float((first.mean() - constants[-1]) / (constants[0] - constants[-1]))  # x'_0 = lam x_0 + (1 - lam) x_{B-1}
        kinds.add("mixup" if torch.allclose(first, first.mean().expand_as(first)) else "cutmix")
        smooth = torch.full((b, C), eps / C)
        smooth[torch.arange(b), labels] += 1 - eps
        target = lam * smooth + (1 - lam) * smooth.flip(0)  # batch mode pairs b with B-1-b
        naive = -(target * _naive_log_softmax(model(out.images))).sum(dim=1).mean()
        assert torch.allclose(out.targets, target, atol=1e-6)
        assert out.loss.item() == pytest.approx(naive.item(), rel=1e-5)
    assert kinds == {"mixup", "cutmix"}


def test_label_smoothing_alone_equals_the_naive_formula():
    recipe = replace(VIT_RECIPE, mixup=0.0, cutmix=0.0)
    mixup, criterion = build_criterion(recipe, C)
    assert mixup is None
    model, images, labels = _linear_model(), torch.randn(5, 3, 8, 8), torch.tensor([0, 2, 4, 6, 8])
    out = batch_loss(model, images, labels, mixup, criterion)
    logp = _naive_log_softmax(model(images))
    naive = -(0.9 * logp[torch.arange(5), labels] + 0.1 * logp.mean(dim=1)).mean()
    assert out.loss.item() == pytest.approx(naive.item(), rel=1e-5) and out.images.shape[0] == 5


def test_resnet_recipe_is_plain_cross_entropy_and_mixup_drops_an_odd_image():
    mixup, criterion = build_criterion(RESNET_RECIPE, C)
    assert mixup is None and isinstance(criterion, nn.CrossEntropyLoss)
    mixup, criterion = build_criterion(VIT_RECIPE, C)
    out = batch_loss(_linear_model(), torch.randn(7, 3, 8, 8), torch.arange(7), mixup, criterion)
    assert out.images.shape[0] == 6 and out.targets.shape == (6, C)
    assert effective_batch_size(256, 11, 1, even=True) == 10 and effective_batch_size(64, 1437, 2, even=False) == 64
    with pytest.raises(ValueError, match="no batch"):
        effective_batch_size(64, 1, 1, even=True)


class _Blobs(torch.utils.data.Dataset):
    """Two classes of 8x8 images: bright top half or bright bottom half (plus noise)."""

    def __init__(self, n: int = 32) -> None:
        gen = torch.Generator().manual_seed(0)
        self.labels = torch.arange(n) % 2
        self.images = 0.3 * torch.randn(n, 3, 8, 8, generator=gen)
        for i, y in enumerate(self.labels.tolist()):
            self.images[i, :, :4] += 2.0 if y == 0 else 0.0
            self.images[i, :, 4:] += 2.0 if y == 1 else 0.0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i]), "index": i}


def test_finetune_lowers_the_loss():
    torch.manual_seed(0)
    vit = VisionTransformer("vit_tiny", img_size=8, patch_size=4, depth=2, embed_dim=32, num_heads=2)
    model = FineTuneClassifier(vit, 2, head_init_std=0.01)
    recipe = replace(VIT_RECIPE, epochs=15, warmup_epochs=1, mixup=0.0, cutmix=0.0, base_lr=4e-3)
    data = LabelSubset(_Blobs(), range(32))
    before = batch_loss(model.eval(), data.dataset.images.clone(), data.dataset.labels, None, nn.CrossEntropyLoss()).loss.item()
    run = finetune(model, data, recipe, batch_size=16, log=None)
    after = batch_loss(model.eval(), data.dataset.images.clone(), data.dataset.labels, None, nn.CrossEntropyLoss()).loss.item()
    assert run["iterations"] == 30 and run["lr"] == pytest.approx(4e-3 * 16 / 256)
    assert after < before


# ------------------------------------------------------------------------------------------------
# class-balanced label subsets
# ------------------------------------------------------------------------------------------------


def _labels() -> torch.Tensor:
    counts = [1, 7, 50, 143, 145, 200]  # rounding cases: 0.1 * 145 = 14.5, a class of one image
    return torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])[torch.randperm(sum(counts), generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_subset_keeps_round_fraction_of_each_class_at_least_one(fraction):
    labels = _labels()
    idx = class_balanced_subset(labels, fraction, seed=0)
    assert idx.tolist() == sorted(set(idx.tolist()))
    for c in range(6):
        n_c = int((labels == c).sum())
        assert int((labels[idx] == c).sum()) == max(1, round(fraction * n_c)), (c, n_c)
    if fraction == 1.0:
        assert idx.tolist() == list(range(len(labels)))


def test_subset_is_seeded():
    labels = _labels()
    assert torch.equal(class_balanced_subset(labels, 0.1, seed=5), class_balanced_subset(labels, 0.1, seed=5))
    assert not torch.equal(class_balanced_subset(labels, 0.1, seed=5), class_balanced_subset(labels, 0.1, seed=6))
    state = torch.get_rng_state()
    class_balanced_subset(labels, 0.1, seed=5)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, math.nan])
def test_subset_refuses_a_fraction_outside_0_1(fraction):
    with pytest.raises(ValueError, match=r"label fraction must be in \(0, 1\]"):
        class_balanced_subset(_labels(), fraction)


def test_indices_file_round_trip(tmp_path):
    labels = _labels()
    idx = class_balanced_subset(labels, 0.1, seed=2)
    record = subset_record(idx, labels, 0.1, 2, dataset="Toy", split="train")
    path = write_indices(tmp_path / "semisup_0.1_indices.json", record)
    back = read_indices(path, split_size=len(labels))
    assert back["indices"] == idx.tolist() and back["fraction"] == 0.1 and back["seed"] == 2
    assert back["per_class"] == {str(c): int((labels[idx] == c).sum()) for c in range(6)}
    assert json.loads(path.read_text())["split_size"] == len(labels)
    with pytest.raises(ValueError, match="training split of 546 images, but this one has 100"):
        read_indices(path, split_size=100)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.json")):
        read_indices(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text(json.dumps({"indices": [1, 1, 2]}))
    with pytest.raises(ValueError, match="more than once"):
        read_indices(tmp_path / "bad.json")
    (tmp_path / "far.json").write_text(json.dumps([0, 999]))
    with pytest.raises(ValueError, match="outside"):
        read_indices(tmp_path / "far.json", split_size=10)
