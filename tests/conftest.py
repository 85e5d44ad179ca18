"""Shared session fixtures: a tiny synthetic video-caption set and a tiny text encoder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _outside_the_checkout(tmp_path_factory, monkeypatch):
    """Every test runs in a folder of its own: a command's default output folder
    (``runs/COMMAND``) lands there, never in the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """16 synthetic videos of 32x32 px, 24 frames (12 train / 4 val); returns the directory."""
    from cpd.data.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("tiny_synth") / "data"
    write_synthetic_dataset(
        out, num_videos=16, width=32, height=32, num_frames=24, workers=1, progress=False, seed=1
    )
    return out


@pytest.fixture(scope="session")
def tiny_text_encoder(tmp_path_factory) -> str:
    """A local directory holding a 2-layer, 32-wide random BERT and the packaged uncased
    tokenizer: a text encoder that trains in milliseconds (``model.text_encoder=<dir>``)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from cpd.models.text import default_tokenizer_path

    out = tmp_path_factory.mktemp("tiny_bert")
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(out)
    AutoTokenizer.from_pretrained(default_tokenizer_path()).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_pretrain_overrides(tiny_synthetic, tiny_text_encoder) -> list[str]:
    """``cpd pretrain`` overrides of the CPU preset for a seconds-long run on the tiny set:
    4-frame 32 px clips, a width-8 r3d10, the tiny BERT, batch 4 (3 steps per epoch)."""
    return [
        f"data.manifest={tiny_synthetic / 'captions.jsonl'}",
        "data.num_frames=4",
        "data.stride=2",
        "data.crop_size=32",
        "data.scale_range=[32,40]",
        "model.base_width=8",
        f"model.text_encoder={tiny_text_encoder}",
        "model.embed_dim=16",
        "model.text_head_dim=32",
        "loss.kind=nce",  # the paper's loss: banks and Z are part of what these tests check
        "loss.num_negatives=16",
        "optim.batch_size=4",
        "optim.lr=0.02",
        "schedule.epochs=2",
        "schedule.milestones=[1]",
        "schedule.unfreeze_epoch=1",
        "run.val_every=1",
        "run.log_every=1",
        "run.progress=false",
        "run.tensorboard=false",
        "run.threads=1",
    ]
