"""Official CPD-Video checkpoints load one to one and reproduce the official forward pass."""

from __future__ import annotations

import pytest
import torch

import cpd
from cpd.errors import CheckpointError
from cpd.models import CPDModel, ResNet3d
from cpd.models.official import load_official_checkpoint
from cpd.models.text import DISTILBERT, load_tokenizer
from tests import official_reference as ref

LONG_CAPTION = " ".join(f"word{i} and a dog" for i in range(40))  # far over 64 tokens
CAPTIONS = ["a man is playing the guitar", "Two DOGS run on the beach!", LONG_CAPTION]


@pytest.fixture(scope="module")
def pretrain_ckpt(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    state = ref.random_state(ref.load_schema(ref.PRETRAIN_SCHEMA), gen, bank_size=8)
    path = tmp_path_factory.mktemp("official") / "cpd_r50_pretrain.pth.tar"
    torch.save(ref.official_checkpoint(state), path)
    return path, state


@pytest.fixture(scope="module")
def loaded_pretrain(pretrain_ckpt):
    path, _ = pretrain_ckpt
    return load_official_checkpoint(path)


def test_pretrain_checkpoint_maps_to_cpd_model(loaded_pretrain, pretrain_ckpt):
    _, state = pretrain_ckpt
    model = loaded_pretrain.model
    assert isinstance(model, CPDModel) and not model.training
    assert loaded_pretrain.kind == "pretrain" and loaded_pretrain.epoch == 300
    cfg = model.config
    assert (cfg.arch, cfg.base_width, cfg.shortcut) == ("r3d50", 64, "A")
    assert cfg.text_encoder == DISTILBERT and cfg.text_compat and cfg.embed_dim == 256
    # the loss state is handed back apart, untouched, with the small bank size we wrote
    assert sorted(loaded_pretrain.loss_state) == ["Z_t", "Z_v", "text_memory", "vis_memory"]
    assert loaded_pretrain.loss_state["vis_memory"].shape == (8, 256)
    assert torch.equal(loaded_pretrain.loss_state["Z_t"], state["module.Z_t"])
    # one-to-one video/head keys
    ours = model.state_dict()
    for key, value in state.items():
        name = key[len("module.") :]
        if name.startswith("textual_encoder."):
            name = "textual_encoder.model." + name[len("textual_encoder.") :]
        elif name in ("vis_memory", "text_memory", "Z_v", "Z_t"):
            continue
        assert torch.equal(ours[name], value), name


def test_pretrain_video_embedding_equals_reference(loaded_pretrain, pretrain_ckpt):
    _, state = pretrain_ckpt
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = loaded_pretrain.model.encode_video(x)
        expected = ref.reference_video_embedding(state, x)
    assert ours.shape == (2, 256)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


def test_pretrain_text_embedding_equals_reference(loaded_pretrain, pretrain_ckpt):
    _, state = pretrain_ckpt
    model = loaded_pretrain.model
    tokens = model.tokenize(CAPTIONS)
    official_ids = ref.official_token_ids(load_tokenizer(DISTILBERT), CAPTIONS)
    assert torch.equal(tokens["input_ids"], official_ids)  # exact official truncation/padding
    with torch.no_grad():
        ours = model.encode_text(CAPTIONS)
        expected = ref.reference_text_embedding(state, load_tokenizer(DISTILBERT), CAPTIONS)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    # a real attention mask would change the embedding of padded captions: compat matters
    with torch.no_grad():
        pooled_masked = model.textual_encoder.model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )[0]
    assert not torch.allclose(
        pooled_masked[0, 0], model.textual_encoder.model(input_ids=tokens["input_ids"])[0][0, 0]
    )


def test_cpd_load_model_reads_official_pretrain(pretrain_ckpt):
    path, _ = pretrain_ckpt
    model = cpd.load_model(path)
    assert isinstance(model, CPDModel) and not model.training


def test_finetune_checkpoint_logits_equal_reference(tmp_path):
    gen = torch.Generator().manual_seed(2)
    state = ref.random_state(ref.load_schema(ref.FINETUNE_SCHEMA), gen)
    path = tmp_path / "ucf101_split1_finetuned.pth"
    torch.save(ref.official_checkpoint(state), path)
    model = cpd.load_model(path)
    assert isinstance(model, ResNet3d) and not model.training
    assert model.num_classes == 101 and model.config.arch == "r3d50"
    x = torch.randn(2, 3, 4, 32, 32, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.reference_logits(state, x), atol=1e-4, rtol=1e-4)


def _small_finetune_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    model = cpd.models.create_resnet3d("r3d18", base_width=8, num_classes=5)
    return {"module." + k: v for k, v in model.state_dict().items()}


def test_depth_width_and_shortcut_are_inferred_from_keys(tmp_path):
    model = cpd.models.create_resnet3d("r3d34", base_width=16, shortcut="B", num_classes=7)
    state = {"module." + k: v for k, v in model.state_dict().items()}
    path = tmp_path / "r34.pth"
    torch.save(ref.official_checkpoint(state, "resnet34"), path)
    loaded = cpd.load_model(path)
    assert (loaded.config.arch, loaded.config.base_width, loaded.config.shortcut) == (
        "r3d34",
        16,
        "B",
    )
    x = torch.randn(1, 3, 2, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda s: s.pop("module.layer2.1.bn1.running_var"),
            "missing keys: layer2.1.bn1.running_var",
        ),
        (
            lambda s: s.update({"module.layer1.0.extra": torch.zeros(1)}),
            "unexpected keys: layer1.0.extra",
        ),
        (
            lambda s: s.update({"module.layer3.0.conv1.weight": torch.zeros(32, 64, 1, 1, 1)}),
            "shape mismatches: layer3.0.conv1.weight (checkpoint [32, 64, 1, 1, 1], model [32, 16, 3, 3, 3])",
        ),
        (lambda s: s.pop("module.layer4.0.conv1.weight"), "missing keys: layer4.0.conv1.weight"),
    ],
)
def test_malformed_official_checkpoint_names_the_key(tmp_path, edit, expected):
    state = _small_finetune_state(torch.Generator().manual_seed(3))
    edit(state)
    path = tmp_path / "bad.pth"
    torch.save(ref.official_checkpoint(state), path)
    with pytest.raises(CheckpointError) as info:
        cpd.load_model(path)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_unrecognised_state_dict_is_rejected(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not an official CPD checkpoint"):
        cpd.load_model(path)
