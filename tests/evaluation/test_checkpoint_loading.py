import argparse
import logging

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from hirl_like.evaluation import checkpoint_loading
from hirl_like.evaluation.checkpoint_files import describe_checkpoint, load_checkpoint_file
from hirl_like.evaluation.checkpoint_loading import extract_state_dict, load_backbone_strict


def _vit(seed: int, depth: int = 2, dim: int = 16, num_classes: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=16, patch_size=8, embed_dim=dim, depth=depth, num_heads=2, num_classes=num_classes
    )


def _same_weights(model: nn.Module, state: dict) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


class Payload:
    """A custom class pickled into a checkpoint: weights_only=True must refuse it."""

    def __init__(self, value: int):
        self.value = value


class Booby:
    """Unpickling this calls open(marker, "w") under weights_only=False."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        # Unpickling with weights_only=False would create the marker file: proof code ran.
        return (open, (self.marker, "w"))


def _save(tmp_path, obj, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_flat_timm_state_dict(tmp_path):
    src, dst = _vit(0), _vit(1)
    ckpt = load_checkpoint_file(_save(tmp_path, src.state_dict()))
    state = extract_state_dict(ckpt, expected_keys=dst.state_dict().keys())
    load_backbone_strict(dst, state)
    assert _same_weights(dst, src.state_dict())


def test_classifier_head_is_dropped_only_as_a_known_extra():
    src, dst = _vit(0, num_classes=10), _vit(1)
    ckpt = src.state_dict()
    state = extract_state_dict(ckpt, expected_keys=dst.state_dict().keys())
    assert "head.weight" not in state
    load_backbone_strict(dst, state)
    kept = extract_state_dict(ckpt, expected_keys=dst.state_dict().keys(), ignore_prefixes=())
    with pytest.raises(ValueError, match=r"unexpected keys \(2\): head.weight, head.bias"):
        load_backbone_strict(dst, kept)


def _ibot_checkpoint(teacher: nn.Module, student: nn.Module) -> dict:
    return {
        "student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()}
        | {"module.head.mlp.0.weight": torch.zeros(4, 16)},
        "teacher": {f"backbone.{k}": v for k, v in teacher.state_dict().items()}
        | {"head.mlp.0.weight": torch.zeros(4, 16)},
        "epoch": 3,
        "args": argparse.Namespace(arch="vit_tiny", patch_size=8),
    }


def test_ibot_style_auto_detects_teacher_and_reports_choice(tmp_path, caplog):
    teacher, student, dst = _vit(0), _vit(1), _vit(2)
    ckpt = load_checkpoint_file(_save(tmp_path, _ibot_checkpoint(teacher, student)))  # Namespace is allowed
    assert ckpt["args"].arch == "vit_tiny"
    with caplog.at_level(logging.INFO, logger="hirl_like.evaluation.checkpoint_loading"):
        state = extract_state_dict(ckpt, expected_keys=dst.state_dict().keys())
    assert "['teacher']" in caplog.text and "'backbone.'" in caplog.text and "['student']" in caplog.text
    load_backbone_strict(dst, state)
    assert _same_weights(dst, teacher.state_dict())

    explicit = extract_state_dict(ckpt, model_prefix="student", backbone_prefix="module.backbone")  # no trailing dot
    load_backbone_strict(dst, explicit)
    assert _same_weights(dst, student.state_dict())

    # Only the sub-dict given: the prefix inside it is still detected.
    half = extract_state_dict(ckpt, model_prefix="student", expected_keys=dst.state_dict().keys())
    assert all(torch.equal(half[k], v) for k, v in explicit.items()) and half.keys() == explicit.keys()


def test_model_module_backbone_style(tmp_path):
    src, dst = _vit(0), _vit(1)
    ckpt = {"model": {f"module.backbone.{k}": v for k, v in src.state_dict().items()}, "optimizer": {"state": {}}}
    ckpt = load_checkpoint_file(_save(tmp_path, ckpt))
    auto = extract_state_dict(ckpt, expected_keys=dst.state_dict().keys())
    explicit = extract_state_dict(ckpt, model_prefix="model", backbone_prefix="module.backbone.")
    assert auto.keys() == explicit.keys() == dst.state_dict().keys()
    load_backbone_strict(dst, auto)
    assert _same_weights(dst, src.state_dict())


def test_auto_detection_prefers_ema_and_exact_cover():
    live, ema, dst = _vit(0), _vit(1), _vit(2)
    ckpt = {"state_dict": live.state_dict(), "model_ema": {f"module.{k}": v for k, v in ema.state_dict().items()}}
    state = extract_state_dict(ckpt, expected_keys=dst.state_dict().keys())
    load_backbone_strict(dst, state)
    assert _same_weights(dst, ema.state_dict())

    # A sub-dict that also carries a decoder covers the keys but not exactly; the exact one wins.
    mae = {"with_decoder": live.state_dict() | {"decoder_embed.weight": torch.zeros(2, 2)}, "encoder": ema.state_dict()}
    loc = checkpoint_loading.locate_state_dict(mae, dst.state_dict().keys())
    assert loc.path == ("encoder",) and loc.prefix == "" and loc.complete


def test_wrong_architecture_lists_missing_and_unexpected_keys():
    dst = _vit(0)
    resnet_like = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict()
    with pytest.raises(ValueError, match="another architecture"):
        extract_state_dict({"model": resnet_like}, expected_keys=dst.state_dict().keys())
    with pytest.raises(ValueError) as err:
        load_backbone_strict(dst, resnet_like)
    msg = str(err.value)
    assert f"missing keys ({len(dst.state_dict())}): cls_token, pos_embed" in msg
    assert "unexpected keys (7): 0.weight, 0.bias, 1.weight" in msg
    assert "(+" in msg  # more than 10 missing keys: the list is cut and says so


def test_deeper_or_wider_model_reports_extras_and_shapes():
    dst = _vit(0, depth=2)
    deeper = extract_state_dict(_vit(1, depth=3).state_dict(), expected_keys=dst.state_dict().keys())
    with pytest.raises(ValueError, match=r"unexpected keys \(12\): blocks\.2\."):
        load_backbone_strict(dst, deeper)
    wider = _vit(1, dim=32).state_dict()
    with pytest.raises(ValueError, match=r"cls_token: checkpoint \(1, 1, 32\) vs model \(1, 1, 16\)"):
        load_backbone_strict(dst, wider)


def test_strict_error_suggests_prefix_flags():
    src, dst = _vit(0), _vit(1)
    ckpt = {"teacher": {f"backbone.{k}": v for k, v in src.state_dict().items()}}
    with pytest.raises(ValueError, match="--model_prefix teacher --backbone_prefix backbone."):
        load_backbone_strict(dst, ckpt)  # the whole checkpoint instead of its state dict
    with pytest.raises(ValueError, match="try --backbone_prefix backbone.") as err:
        load_backbone_strict(dst, ckpt["teacher"])
    assert "'backbone.' (30 keys)" in str(err.value)
    assert _same_weights(dst, _vit(1).state_dict())  # nothing was loaded


def test_nested_checkpoint_without_hints_is_an_error():
    with pytest.raises(ValueError, match="--model_prefix model"):
        extract_state_dict({"model": _vit(0).state_dict(), "epoch": 1})
    with pytest.raises(ValueError, match="not a key"):
        extract_state_dict({"model": _vit(0).state_dict()}, model_prefix="teacher")
    with pytest.raises(ValueError, match="no tensor key starts with backbone_prefix 'encoder.'"):
        extract_state_dict({"model": _vit(0).state_dict()}, model_prefix="model", backbone_prefix="encoder")


def test_weights_only_rejects_pickled_objects(tmp_path, monkeypatch):
    path = _save(tmp_path, {"model": _vit(0).state_dict(), "extra": Payload(3)})
    with pytest.raises(ValueError, match="weights_only=True. refuses to load: .*test_checkpoint_loading.Payload"):
        load_checkpoint_file(path)
    marker = tmp_path / "code_ran"
    with pytest.raises(ValueError, match="refuses to load: io.open"):
        load_checkpoint_file(_save(tmp_path, {"extra": Booby(str(marker))}, "booby.pth"))
    assert not marker.exists()

    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint_file(_save(tmp_path, {"w": torch.ones(1)}, "ok.pth"))
    assert seen["weights_only"] is True and seen["map_location"] == "cpu"


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint_file(tmp_path / "nope.pth")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        load_checkpoint_file(text)
    with pytest.raises(ValueError, match="holds a Tensor, not a dict"):
        load_checkpoint_file(_save(tmp_path, torch.ones(3), "tensor.pth"))


def test_describe_checkpoint_names_nested_keys():
    text = describe_checkpoint(_ibot_checkpoint(_vit(0), _vit(1)))
    assert "4 top-level keys" in text
    assert "'teacher': dict of 31 (31 tensors): 'backbone.cls_token', 'backbone.pos_embed'" in text
    assert "'epoch': int 3" in text and "Namespace" in text
    flat = describe_checkpoint(_vit(0).state_dict())
    assert flat.startswith("dict with 30 top-level keys (30 tensors):") and "'cls_token': Tensor(1, 1, 16)" in flat
    assert "... (22 more)" in flat


# ----------------------------------------------------------------------------------------------
# ResNet state dicts under HIRL / MoCo / SimSiam style nesting
# ----------------------------------------------------------------------------------------------


def _resnet_export(seed: int) -> dict:
    from hirl_like.models.resnet import ResNet

    torch.manual_seed(seed)
    return ResNet("resnet18", small_image_stem=True).export_state_dict()


def _timm_resnet18() -> nn.Module:
    from hirl_like.models.resnet import create_timm_resnet

    return create_timm_resnet("resnet18", small_image_stem=True)


@pytest.mark.parametrize("model_prefix,backbone_prefix", [("model", "module.encoder_q."), ("state_dict", "backbone.")])
def test_prefixed_resnet_state_dict_loads_with_the_prefix_flags(tmp_path, model_prefix, backbone_prefix):
    query, key, dst = _resnet_export(0), _resnet_export(1), _timm_resnet18()
    weights = {f"{backbone_prefix}{k}": v for k, v in query.items()}
    weights[f"{backbone_prefix}fc.0.weight"] = torch.zeros(8, 512)  # a projection head: a known extra
    # MoCo's key encoder: the same keys under another prefix, other weights.
    weights |= {f"module.encoder_k.{k}": v for k, v in key.items()}
    ckpt = load_checkpoint_file(_save(tmp_path, {model_prefix: weights, "epoch": 3}))
    expected = dst.state_dict().keys()
    for kwargs in ({"backbone_prefix": backbone_prefix}, {"model_prefix": model_prefix, "backbone_prefix": backbone_prefix},
                   {"backbone_prefix": backbone_prefix.rstrip(".")}):  # the trailing dot is optional
        state = extract_state_dict(ckpt, expected_keys=expected, **kwargs)
        assert state.keys() == expected, kwargs  # fc.0.weight dropped as a classifier-like extra
        load_backbone_strict(dst, state)
        assert _same_weights(dst, query)
    # Without the prefix both encoders fit: a complete cover with the other one listed as an
    # alternative (logged as a warning), which is why HIRL's scripts pass the prefix ...
    located = checkpoint_loading.locate_state_dict(ckpt, expected)
    assert located.complete and located.path == (model_prefix,) and len(located.alternatives) == 1
    # ... and a wrong prefix is an error naming the prefixes present.
    with pytest.raises(ValueError, match="module.encoder_k"):
        extract_state_dict(ckpt, model_prefix=model_prefix, backbone_prefix="module.encoder_z.")


def test_prefixed_resnet_state_dict_through_load_vision_backbone(tmp_path):
    from hirl_like.export import export_target, load_vision_backbone

    query = _resnet_export(0)
    path = _save(tmp_path, {"model": {f"module.encoder_q.{k}": v for k, v in query.items()}}, "moco.pth")
    model, note = load_vision_backbone(path, {"name": "resnet18", "small_image_stem": True},
                                       backbone_prefix="module.encoder_q.")
    assert note.endswith("[:module.encoder_q.]")
    assert _same_weights(export_target(model), query) and model.export_state_dict().keys() == query.keys()
    # Our own export (no prefix, no nesting) loads as it is.
    plain, note = load_vision_backbone(_save(tmp_path, query, "export.pth"), {"name": "resnet18", "small_image_stem": True})
    assert _same_weights(export_target(plain), query) and "[" not in note
    # The other stem is a shape mismatch whose message says which flag fits.
    with pytest.raises(ValueError, match=r"(?s)conv1.weight: checkpoint \(64, 3, 3, 3\).*hint: .*small_image_stem=true"):
        load_vision_backbone(path, {"name": "resnet18"}, backbone_prefix="module.encoder_q.")
