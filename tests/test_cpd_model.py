"""The two-tower CPD model, build_model, and own save/load formats with strict errors."""

from __future__ import annotations

import json

import pytest
import torch

import cpd
from cpd.errors import CheckpointError
from cpd.models import CPDModel, ModelConfig, ResNet3d, build_model, save_model

TINY = ModelConfig(arch="r3d10", base_width=8)
CAPTIONS = ["a man plays the guitar", "two dogs run on a beach", "cooking pasta"]


def _video(b: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> CPDModel:
    torch.manual_seed(0)  # parameter init only
    return build_model(TINY)


def test_build_model_layout_and_official_attribute_names(model):
    assert isinstance(model, CPDModel) and model.config == TINY
    keys = model.state_dict().keys()
    for name in (
        "vis_emb.weight",
        "text_emb.0.weight",
        "text_emb.1.running_var",
        "text_emb.3.bias",
    ):
        assert name in keys
    assert not any(k.startswith("visual_encoder.fc") for k in keys)
    assert model.vis_emb.in_features == model.visual_encoder.num_features == 64
    assert model.text_emb[0].in_features == model.textual_encoder.hidden_size == 384
    assert (
        isinstance(model.text_emb[1], torch.nn.BatchNorm1d)
        and model.text_emb[3].out_features == 256
    )
    assert not any("memory" in k or k.startswith("Z_") for k in keys)  # no bank inside


def test_embeddings_are_normalised_and_consistent(model):
    model.eval()
    with torch.no_grad():
        v = model.encode_video(_video())
        t = model.encode_text(CAPTIONS)
        tokens = model.tokenize(CAPTIONS)
        v2, t2 = model(_video(), tokens["input_ids"], tokens["attention_mask"])
        pooled = model.textual_encoder.encode_tokens(**tokens)
        t3 = model.embed_text_pooled(pooled)
    assert v.shape == t.shape == (3, 256)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(t.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(v2, v)
    torch.testing.assert_close(t2, t)
    torch.testing.assert_close(t3, t)


def test_every_trainable_parameter_gets_a_gradient_and_frozen_text_none(model):
    tokens = model.tokenize(CAPTIONS)
    try:
        model.train()
        v, t = model(_video(), tokens["input_ids"], tokens["attention_mask"])
        (v @ t.T).diag().sum().backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing
        model.zero_grad(set_to_none=True)

        model.textual_encoder.freeze()
        model.train()  # must not switch the frozen encoder back to train mode
        assert model.training and not model.textual_encoder.model.training
        assert model.text_emb.training  # the head still trains
        v, t = model(_video(), tokens["input_ids"], tokens["attention_mask"])
        (v @ t.T).diag().sum().backward()
        for name, p in model.named_parameters():
            if name.startswith("textual_encoder."):
                assert p.grad is None and not p.requires_grad, name
            else:
                assert p.grad is not None, name
    finally:
        model.zero_grad(set_to_none=True)
        model.textual_encoder.unfreeze()
        model.eval()


def test_build_model_with_num_classes_gives_the_classifier():
    clf = build_model(ModelConfig(arch="r3d18", base_width=8, num_classes=11, dropout=0.5))
    assert isinstance(clf, ResNet3d) and clf.num_classes == 11 and clf.dropout.p == 0.5
    assert clf.config.num_classes == 11


def test_model_config_round_trips_and_rejects_unknown_keys():
    assert ModelConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(cpd.errors.CPDError, match="model.depth"):
        ModelConfig.from_dict({"depth": 50})


def _outputs(m: CPDModel) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return m.encode_video(_video(2, seed=5)), m.encode_text(CAPTIONS[:2])


def test_export_round_trip_gives_identical_outputs(model, tmp_path):
    model.eval()
    out = save_model(model, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer",
    ]
    assert json.loads((out / "config.json").read_text())["model"] == TINY.to_dict()
    for path in (out, out / "model.safetensors"):
        loaded = cpd.load_model(path)
        assert isinstance(loaded, CPDModel) and not loaded.training and loaded.config == TINY
        for a, b in zip(_outputs(model), _outputs(loaded), strict=True):
            assert torch.equal(a, b)


def test_training_checkpoint_round_trip(model, tmp_path):
    model.eval()
    state = {"module." + k: v for k, v in model.state_dict().items()}  # as saved under DDP
    path = tmp_path / "ckpt.pt"
    torch.save({"model": state, "config": {"model": TINY.to_dict(), "optim": {}}, "epoch": 3}, path)
    loaded = cpd.load_model(path)
    for a, b in zip(_outputs(model), _outputs(loaded), strict=True):
        assert torch.equal(a, b)


@pytest.fixture()
def classifier_ckpt(tmp_path):
    cfg = ModelConfig(arch="r3d10", base_width=8, num_classes=3)
    clf = build_model(cfg)
    return tmp_path / "clf.pt", clf.state_dict(), cfg


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s.pop("layer1.0.bn2.weight"), "missing keys: layer1.0.bn2.weight"),
        (lambda s: s.__setitem__("head.weight", torch.zeros(2)), "unexpected keys: head.weight"),
        (
            lambda s: s.__setitem__("fc.weight", torch.zeros(5, 64)),
            "fc.weight (checkpoint [5, 64], model [3, 64])",
        ),
        (lambda s: s.__setitem__("fc.bias", [0.0, 0.0, 0.0]), "fc.bias (not a tensor: list)"),
    ],
)
def test_malformed_training_checkpoint_names_the_problem(classifier_ckpt, edit, expected):
    path, state, cfg = classifier_ckpt
    edit(state)
    torch.save({"model": state, "config": {"model": cfg.to_dict()}}, path)
    with pytest.raises(CheckpointError) as info:
        cpd.load_model(path)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_unreadable_or_foreign_files(tmp_path, classifier_ckpt):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt: cannot read checkpoint"):
        cpd.load_model(garbage)
    with pytest.raises(CheckpointError, match="missing.pt: no such file"):
        cpd.load_model(tmp_path / "missing.pt")
    listed = tmp_path / "list.pt"
    torch.save([1, 2, 3], listed)
    with pytest.raises(CheckpointError, match="list.pt: expected a dict checkpoint, got list"):
        cpd.load_model(listed)
    path, state, cfg = classifier_ckpt
    torch.save({"model": state, "config": {"model": {**cfg.to_dict(), "arch": 50}}}, path)
    with pytest.raises(CheckpointError, match="bad model config: model.arch"):
        cpd.load_model(path)
    torch.save({"model": state, "config": {}}, path)
    with pytest.raises(CheckpointError, match=r"lacks config\['model'\]"):
        cpd.load_model(path)


def test_export_errors_name_the_file(tmp_path):
    clf = build_model(ModelConfig(arch="r3d10", base_width=8, num_classes=2))
    out = save_model(clf, tmp_path / "clf")
    assert isinstance(cpd.load_model(out), ResNet3d)
    meta = json.loads((out / "config.json").read_text())
    for bad, message in ((["x"], "preprocessing is a list, not a dict"),
                         ({"num_frames": 0, "stride": 1, "crop_size": 8}, "bad preprocessing: ")):  # fmt: skip
        (out / "config.json").write_text(json.dumps({**meta, "preprocessing": bad}))
        with pytest.raises(CheckpointError, match=f"config.json: {message}"):
            cpd.load_model(out)
    (out / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read weights"):
        cpd.load_model(out)
    (out / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        cpd.load_model(out / "model.safetensors")
