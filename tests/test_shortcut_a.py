"""Shortcut "A" gradient: detached in the blocks that change shape, as the official code
(``downsample_basic_block`` rebuilt the zero-padded tensor from ``out.data``), unless
``model.shortcut_grad`` is set; forward values never differ."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import cpd
from cpd.config import apply_overrides
from cpd.models import ModelConfig, ResNet3d, build_model, create_resnet3d, save_model
from cpd.models.official import load_official_checkpoint
from cpd.models.resnet3d import _Shortcut
from cpd.train.config import PretrainConfig


def _tiny(arch: str, shortcut_grad: bool, **kw) -> ResNet3d:
    torch.manual_seed(0)  # parameter init only: both modes get the same weights
    return create_resnet3d(arch, base_width=8, shortcut_grad=shortcut_grad, **kw)


def _input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def _shortcut_only_input_grad(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. the block input with the residual branch silenced (its last BN scaled
    by 0, bias 0), so that only the shortcut carries the gradient back."""
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    with torch.no_grad():
        last_bn.weight.zero_()
        last_bn.bias.zero_()
    block(x).sum().backward()
    assert x.grad is not None  # the residual branch still reads x (with zero gradient)
    return x.grad


# (arch, stage, input channels at base_width 8): every block whose shortcut changes shape
TRANSITIONS = [
    ("r3d18", "layer2", 8),  # basic: stride 2, 8 -> 16 channels
    ("r3d18", "layer4", 32),
    ("r3d50", "layer1", 8),  # bottleneck: no stride, only widens 8 -> 32 channels
    ("r3d50", "layer2", 32),
    ("r3d50", "layer3", 64),
]


@pytest.mark.parametrize(("arch", "stage", "cin"), TRANSITIONS)
@pytest.mark.parametrize("train", [True, False])
def test_transition_shortcut_is_detached_by_default_and_passes_grad_with_option(
    arch, stage, cin, train
):
    grads = {}
    for grad_mode in (False, True):
        block = getattr(_tiny(arch, grad_mode), stage)[0].train(train)
        assert isinstance(block.downsample, _Shortcut) and block.downsample.grad is grad_mode
        grads[grad_mode] = _shortcut_only_input_grad(block, _input((2, cin, 2, 8, 8)))
    assert torch.count_nonzero(grads[False]) == 0  # official: nothing crosses the shortcut
    assert torch.count_nonzero(grads[True]) > 0
    # the gradient that crosses is the subsampled identity: ones where relu(x) > 0 is kept
    x = _input((2, cin, 2, 8, 8))
    stride = 1 if stage == "layer1" else 2
    kept = (x.detach()[:, :, :, ::stride, ::stride] > 0).float()
    torch.testing.assert_close(grads[True][:, :, :, ::stride, ::stride], kept)


@pytest.mark.parametrize("arch", ["r3d18", "r3d50"])
def test_identity_shortcuts_keep_their_gradient(arch):
    for grad_mode in (False, True):
        block = _tiny(arch, grad_mode).layer2[1].train()
        assert block.downsample is None
        cin = block.conv1.in_channels
        g = _shortcut_only_input_grad(block, _input((2, cin, 2, 4, 4)))
        assert torch.count_nonzero(g) > 0


def test_forward_values_identical_and_only_grads_below_transitions_differ():
    x = torch.randn(2, 3, 2, 32, 32, generator=torch.Generator().manual_seed(3))
    out, grads = {}, {}
    for grad_mode in (False, True):
        model = _tiny("r3d50", grad_mode, num_classes=3).train()
        y = model(x)
        y.square().sum().backward()
        out[grad_mode] = y.detach()
        grads[grad_mode] = {n: p.grad.clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            out[(grad_mode, "eval")] = model.eval()(x)
    assert torch.equal(out[False], out[True])
    assert torch.equal(out[(False, "eval")], out[(True, "eval")])
    # above the last transition block (its residual branch, later blocks, fc) nothing differs
    same = [n for n in grads[False] if n.startswith(("layer4.1.", "layer4.2.", "fc."))]
    assert same and all(torch.equal(grads[False][n], grads[True][n]) for n in same)
    assert not torch.equal(grads[False]["conv1.weight"], grads[True]["conv1.weight"])


def _official_downsample_basic_block(x, planes, stride):
    """The official function (models/resnet.py), with ``Variable(...)`` a plain tensor."""
    out = F.avg_pool3d(x, kernel_size=1, stride=stride)
    zero_pads = torch.zeros(
        out.size(0), planes - out.size(1), out.size(2), out.size(3), out.size(4)
    )
    return torch.cat([out.data, zero_pads], dim=1)


@pytest.mark.parametrize("arch", ["r3d10", "r3d50"])
def test_default_gradients_equal_the_official_shortcut(arch, monkeypatch):
    x = torch.randn(2, 3, 2, 32, 32, generator=torch.Generator().manual_seed(4))

    def grads_of(model):
        model.train()(x).square().sum().backward()
        return {n: p.grad for n, p in model.named_parameters()}

    ours = grads_of(_tiny(arch, False, num_classes=3))
    monkeypatch.setattr(
        _Shortcut,
        "forward",
        lambda self, t: _official_downsample_basic_block(
            t, self.out_channels, (1, self.stride, self.stride)
        ),
    )
    official = grads_of(_tiny(arch, False, num_classes=3))
    assert ours.keys() == official.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], official[name], rtol=1e-5, atol=1e-6, msg=name)


def test_model_config_default_round_trip_and_override():
    assert ModelConfig().shortcut_grad is False
    assert PretrainConfig().model.shortcut_grad is False
    cfg = ModelConfig(arch="r3d10", base_width=8, shortcut_grad=True)
    assert cfg.to_dict()["shortcut_grad"] is True
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert apply_overrides(PretrainConfig(), ["model.shortcut_grad=true"]).model.shortcut_grad
    with pytest.raises(cpd.errors.CPDError, match="shortcut_grad"):
        ModelConfig.from_dict({"shortcut_grad": "sometimes"})
    assert (
        build_model(ModelConfig(arch="r3d10", base_width=8, num_classes=2)).shortcut_grad is False
    )


def _flags(model: torch.nn.Module) -> set[bool]:
    return {m.grad for m in model.modules() if isinstance(m, _Shortcut)}


@pytest.mark.parametrize("grad_mode", [False, True])
def test_export_round_trip_keeps_the_option(grad_mode, tmp_path):
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(arch="r3d10", base_width=8, num_classes=3, shortcut_grad=grad_mode)
    )
    assert _flags(model) == {grad_mode}
    out = save_model(model, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["model"]["shortcut_grad"] is grad_mode
    loaded = cpd.load_model(out)
    assert loaded.config.shortcut_grad is grad_mode and _flags(loaded) == {grad_mode}


def test_exports_and_checkpoints_without_the_key_load_value_identical(tmp_path):
    """Written before the option existed (and trained with the gradient flowing): they load
    with the official default; the forward pass does not depend on it."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="r3d10", base_width=8, num_classes=3, shortcut_grad=True))
    model.eval()
    out = save_model(model, tmp_path / "export")
    meta = json.loads((out / "config.json").read_text())
    del meta["model"]["shortcut_grad"]
    (out / "config.json").write_text(json.dumps(meta))
    old_cfg = dict(meta["model"])
    ckpt = tmp_path / "old.pt"
    torch.save({"model": model.state_dict(), "config": {"model": old_cfg}}, ckpt)
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(x)
    for path in (out, ckpt):
        loaded = cpd.load_model(path)
        assert loaded.config.shortcut_grad is False and _flags(loaded) == {False}
        with torch.no_grad():
            assert torch.equal(loaded(x), expected)


def test_official_checkpoints_load_detached(tmp_path):
    torch.manual_seed(0)
    state = create_resnet3d("r3d50", base_width=8, num_classes=5).state_dict()
    path = tmp_path / "official_finetune.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 1}, path)
    model = load_official_checkpoint(str(path)).model
    assert model.config.shortcut == "A" and model.config.shortcut_grad is False
    assert _flags(model) == {False}


def test_shortcut_b_always_passes_the_gradient():
    """The option is about the zero-pad shortcut; a conv shortcut has parameters to train."""
    for grad_mode in (False, True):
        block = _tiny("r3d18", grad_mode, shortcut="B").layer2[0].train()
        g = _shortcut_only_input_grad(block, _input((2, 8, 2, 8, 8)))
        assert torch.count_nonzero(g) > 0
