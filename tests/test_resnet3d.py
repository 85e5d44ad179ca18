"""The slow-only 3D ResNet: shapes, layout, official key names, init, gradients, formats."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import cpd
from cpd.models.resnet3d import ARCHS, ResNet3d, create_resnet3d, resnet3d_50
from tests import official_reference as ref


def _tiny(arch: str = "r3d18", **kw) -> ResNet3d:
    torch.manual_seed(0)  # parameter init only; inputs below use explicit generators
    return create_resnet3d(arch, base_width=8, **kw)


@pytest.mark.parametrize(
    ("arch", "t", "h", "w"),
    [
        ("r3d10", 8, 17, 23),
        ("r3d18", 3, 40, 56),
        ("r3d34", 1, 32, 32),
        ("r3d50", 5, 24, 40),
        ("r3d101", 2, 16, 16),
        ("r3d10", 1, 1, 1),
    ],
)
def test_any_input_size_gives_pooled_features(arch, t, h, w):
    model = _tiny(arch, num_classes=5).eval()
    x = torch.randn(2, 3, t, h, w, generator=torch.Generator().manual_seed(t))
    expansion = 4 if arch in ("r3d50", "r3d101") else 1
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
    assert model.num_features == 64 * expansion
    assert feats.shape == (2, model.num_features) and logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


def test_time_is_never_strided_and_temporal_kernels_only_in_layer3_4():
    model = _tiny("r3d50").eval()
    seen = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: seen.__setitem__(name, tuple(out.shape[2:]))
        )
    with torch.no_grad():
        model.forward_features(torch.randn(1, 3, 6, 64, 64))
    assert seen == {
        "layer1": (6, 16, 16),
        "layer2": (6, 8, 8),
        "layer3": (6, 4, 4),
        "layer4": (6, 2, 2),
    }
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv3d):
            assert m.stride[0] == 1, name
            temporal = m.kernel_size[0] > 1
            assert temporal == (name.startswith(("layer3", "layer4")) and name.endswith("conv1")), (
                name
            )
    basic = _tiny("r3d18")
    assert basic.layer3[0].conv1.kernel_size == (3, 3, 3)
    assert basic.layer2[0].conv1.kernel_size == (1, 3, 3) and basic.layer2[0].conv1.stride == (
        1,
        2,
        2,
    )


def test_key_names_and_shapes_match_the_official_schemas():
    finetune = {
        k[len("module.") :]: tuple(v[0]) for k, v in ref.load_schema(ref.FINETUNE_SCHEMA).items()
    }
    model = resnet3d_50(num_classes=101)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == finetune
    pretrain = {
        k[len("module.visual_encoder.") :]: tuple(v[0])
        for k, v in ref.load_schema(ref.PRETRAIN_SCHEMA).items()
        if k.startswith("module.visual_encoder.")
    }
    model.reset_classifier(0)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == pretrain


def test_shortcut_a_has_no_parameters_and_b_has_conv_bn():
    a = _tiny("r3d50", shortcut="A")
    b = _tiny("r3d50", shortcut="B")
    extra = sorted(set(b.state_dict()) - set(a.state_dict()))
    assert not set(a.state_dict()) - set(b.state_dict())
    # bottlenecks: layer1 widens 8 -> 32 channels, layers 2-4 also stride: 4 projections
    assert {k.rsplit(".downsample.", 1)[0] for k in extra} == {f"layer{i}.0" for i in range(1, 5)}
    assert "layer2.0.downsample.0.weight" in extra and "layer2.0.downsample.1.running_var" in extra
    assert b.layer2[0].downsample[0].stride == (1, 2, 2)  # never in time (official B would)
    basic = _tiny("r3d18", shortcut="B")
    assert not any("layer1" in k and "downsample" in k for k in basic.state_dict())
    with torch.no_grad():
        assert b.eval()(torch.randn(1, 3, 4, 32, 32)).shape == (1, b.num_features)


def test_shortcut_a_is_subsample_plus_zero_channels():
    model = _tiny("r3d18").eval()
    block = model.layer2[0]
    x = torch.randn(1, 8, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    out = block.downsample(x)
    assert out.shape == (1, 16, 2, 4, 4)
    torch.testing.assert_close(out[:, :8], x[:, :, :, ::2, ::2])
    assert not out[:, 8:].any()


def test_init_bn_ones_zeros_and_kaiming_fan_out():
    model = create_resnet3d("r3d50")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    w = model.layer3[0].conv1.weight  # [256, 512, 3, 1, 1]: fan_out = 256 * 3
    expected = math.sqrt(2.0 / (w.shape[0] * 3))
    assert abs(w.std().item() / expected - 1) < 0.02


def test_reset_classifier_and_dropout():
    model = _tiny("r3d10", num_classes=4, dropout=0.5)
    assert model.get_classifier().out_features == 4
    model.reset_classifier(7)
    assert model.num_classes == 7 and model.fc.weight.shape == (7, model.num_features)
    model.reset_classifier(0)
    assert isinstance(model.fc, nn.Identity) and "fc.weight" not in model.state_dict()
    feats = torch.ones(4, model.num_features)
    model.train()
    assert (model.forward_head(feats) == 0).any()  # dropout active in train mode
    model.eval()
    assert torch.equal(model.forward_head(feats), feats)
    model.reset_classifier(3, dropout=0.0)
    model.train()
    assert model.forward_head(feats).shape == (4, 3)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_every_parameter_gets_a_gradient(shortcut):
    model = _tiny("r3d50" if shortcut == "A" else "r3d34", num_classes=3, shortcut=shortcut).train()
    x = torch.randn(2, 3, 2, 32, 32, generator=torch.Generator().manual_seed(0))
    model(x).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_channels_last_3d_and_autocast():
    model = _tiny("r3d18", num_classes=3).eval()
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(x)
        cl = model.to(memory_format=torch.channels_last_3d)(
            x.contiguous(memory_format=torch.channels_last_3d)
        )
        torch.testing.assert_close(cl, base, atol=1e-4, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), base, atol=0.1, rtol=0.1)
    # gradients also flow in channels_last
    model.train()
    model(x.contiguous(memory_format=torch.channels_last_3d)).sum().backward()
    assert model.conv1.weight.grad is not None


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown video arch 'r3d7'"):
        create_resnet3d("r3d7")
    with pytest.raises(ValueError, match="shortcut"):
        create_resnet3d("r3d10", shortcut="C")
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        _tiny("r3d10").forward_features(torch.zeros(3, 8, 32, 32))


def test_registry_names_and_depths():
    assert sorted(ARCHS, key=lambda a: int(a[3:])) == ["r3d10", "r3d18", "r3d34", "r3d50", "r3d101"]
    depth = {
        name: 2 + sum(m.layers) * (3 if m.block.expansion == 4 else 2)
        for name, m in ((n, create_resnet3d(n, base_width=4)) for n in ARCHS)
    }
    assert depth == {"r3d10": 10, "r3d18": 18, "r3d34": 34, "r3d50": 50, "r3d101": 101}


def test_temporal_stages_put_temporal_kernels_where_asked():
    model = _tiny("r3d18", temporal_stages=(1, 2, 3, 4))
    assert model.layer1[0].conv1.kernel_size == (3, 3, 3)
    assert model.layer2[1].conv1.kernel_size == (3, 3, 3)
    assert model.layer4[0].conv2.kernel_size == (1, 3, 3)  # conv2 stays spatial, as in CPD
    x = torch.randn(1, 3, 5, 32, 32)
    assert model.forward_features(x).shape == (1, model.num_features)
    slow = _tiny("r3d18")
    assert slow.temporal_stages == (3, 4) and slow.layer1[0].conv1.kernel_size == (1, 3, 3)
    with pytest.raises(ValueError, match="temporal_stages"):
        _tiny("r3d18", temporal_stages=(0, 5))


def test_temporal_stages_survive_export_and_load(tmp_path):
    config = cpd.ModelConfig(arch="r3d10", base_width=8, num_classes=3, temporal_stages=[2, 3, 4])
    model = cpd.build_model(config)
    cpd.save_model(model, tmp_path / "export")
    loaded = cpd.load_model(tmp_path / "export")
    assert loaded.temporal_stages == (2, 3, 4)
    assert loaded.layer2[0].conv1.kernel_size == (3, 3, 3)
