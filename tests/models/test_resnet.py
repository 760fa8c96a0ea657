"""ResNet backbone: strict export into timm and torchvision, small stem, registry entries."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hirl_like.models.resnet import ResNet, create_timm_resnet, create_torchvision_resnet
from hirl_like.registry import MODELS


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BN statistics, so that a wrong key mapping would change the outputs."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))


CASES = [("resnet18", False, 64), ("resnet18", True, 32), ("resnet50", False, 64), ("resnet50", True, 32)]


@pytest.mark.parametrize("arch,small,size", CASES)
def test_export_loads_strictly_into_timm_and_torchvision_with_identical_outputs(arch, small, size):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = ResNet(arch, small_image_stem=small).eval()
    _randomise_bn(model, gen)
    state = model.export_state_dict()
    timm_net = create_timm_resnet(arch, small_image_stem=small).eval()
    tv_net = create_torchvision_resnet(arch, small_image_stem=small).eval()
    timm_net.load_state_dict(state, strict=True)
    tv_net.load_state_dict(state, strict=True)
    # the plain key sets coincide (torchvision's only extra keys are fc.*, removed here)
    assert set(state) == set(timm_net.state_dict()) == set(tv_net.state_dict())
    x = torch.randn(2, 3, size, size, generator=gen)
    with torch.no_grad():
        ours = model(x)
        assert ours.shape == (2, model.num_features)
        torch.testing.assert_close(timm_net(x), ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tv_net(x), ours, rtol=1e-5, atol=1e-5)


def test_export_is_a_detached_copy():
    model = ResNet("resnet18")
    state = model.export_state_dict()
    assert not any(v.requires_grad for v in state.values())
    state["conv1.weight"].zero_()
    assert model.model.conv1.weight.abs().sum() > 0


def test_torchvision_keys_equal_timm_keys_plus_fc():
    import torchvision

    for arch in ("resnet18", "resnet50"):
        tv = set(getattr(torchvision.models, arch)(weights=None).state_dict())
        ours = set(ResNet(arch).export_state_dict())
        assert tv - ours == {"fc.weight", "fc.bias"} and ours <= tv


def test_small_stem_keeps_32_px_to_4x4_final_map_for_resnet18():
    model = ResNet("resnet18", small_image_stem=True).eval()
    conv1 = model.model.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding, conv1.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert isinstance(model.model.maxpool, nn.Identity)
    with torch.no_grad():
        fmap = model.forward_features(torch.randn(2, 3, 32, 32))
        assert fmap.shape == (2, 512, 4, 4)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    # the standard stem divides by 32: 32 px -> 1x1
    with torch.no_grad():
        assert ResNet("resnet18").eval().forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 1, 1)


def test_small_stem_state_does_not_load_into_a_standard_target():
    state = ResNet("resnet18", small_image_stem=True).export_state_dict()
    with pytest.raises(RuntimeError, match="conv1.weight"):
        create_timm_resnet("resnet18").load_state_dict(state, strict=True)


def test_pooled_output_is_mean_of_feature_map():
    model = ResNet("resnet18", small_image_stem=True).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_features(x).mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)


def test_registry_entries_and_attributes():
    assert MODELS.get("resnet") is ResNet and MODELS.get("ResNet") is ResNet
    r18 = MODELS.build({"name": "resnet18", "small_image_stem": True})
    r50 = MODELS.build({"name": "resnet", "arch": "resnet50"})
    assert (r18.arch, r18.num_features, r18.embed_dim, r18.small_image_stem) == ("resnet18", 512, 512, True)
    assert (r50.arch, r50.num_features) == ("resnet50", 2048)
    assert isinstance(MODELS.build({"name": "resnet50"}), ResNet)
    assert MODELS.build({"name": "resnet18", "drop_path_rate": 0.1}).model.layer4[1].drop_path.drop_prob > 0


def test_gradients_reach_every_parameter():
    model = ResNet("resnet18", small_image_stem=True).train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("kwargs,match", [({"arch": "resnet7"}, "arch"), ({"drop_path_rate": 1.0}, "drop_path_rate")])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet(**kwargs)
