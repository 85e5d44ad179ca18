"""The pretraining step: cached frozen text features, NaN guard, bank update after the step."""

from __future__ import annotations

import math

import pytest
import torch

from cpd.losses import MemoryBankNCELoss, negative_generator, temporal_negatives
from cpd.models import ModelConfig, build_model
from cpd.train.step import TextFeatureCache, pretrain_step


@pytest.fixture(scope="module")
def tiny_config():
    return ModelConfig(arch="r3d10", base_width=8, text_encoder="all-MiniLM-L6-v2")


def _batch(model, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = model.tokenize([f"a red star moving left number {i}" for i in range(n)])
    return {"video": torch.randn(n, 3, 4, 32, 32, generator=g), "index": torch.arange(n), **tokens}


def _setup(config, num_data=16):
    torch.manual_seed(0)
    model = build_model(config)
    model.textual_encoder.freeze()
    loss_fn = MemoryBankNCELoss(num_data, num_negatives=8)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    return model, loss_fn, opt


def test_cache_equals_running_the_frozen_encoder(tiny_config):
    model, _, _ = _setup(tiny_config)
    batch = _batch(model)
    cache = TextFeatureCache(16, model.textual_encoder.hidden_size, dtype=torch.float32)
    first = cache.pooled(
        model.textual_encoder, batch["input_ids"], batch["attention_mask"], batch["index"]
    )
    with torch.no_grad():
        direct = model.textual_encoder.encode_tokens(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(first, direct, atol=1e-6)
    assert cache.filled[:4].all() and not cache.filled[4:].any()
    # a cached row is served from the cache: poison the encoder and ask again
    for p in model.textual_encoder.parameters():
        p.data.add_(1.0)
    again = cache.pooled(
        model.textual_encoder, batch["input_ids"], batch["attention_mask"], batch["index"]
    )
    assert torch.equal(first, again)


def test_step_with_cache_matches_step_without(tiny_config):
    results = []
    for use_cache in (False, True):
        model, loss_fn, opt = _setup(tiny_config)
        model.train()
        cache = (
            TextFeatureCache(16, model.textual_encoder.hidden_size, torch.float32)
            if use_cache
            else None
        )
        out = pretrain_step(
            model,
            loss_fn,
            opt,
            _batch(model),
            generator=negative_generator(0, 0, 0, 0),
            text_cache=cache,
        )
        results.append(
            (
                out.terms["loss"],
                model.vis_emb.weight.detach().clone(),
                loss_fn.video_bank.memory.clone(),
            )
        )
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)
    assert torch.allclose(results[0][2], results[1][2], atol=1e-6)


def test_step_updates_weights_and_only_batch_rows(tiny_config):
    model, loss_fn, opt = _setup(tiny_config)
    before_w = model.vis_emb.weight.detach().clone()
    before_text = {k: v.clone() for k, v in model.textual_encoder.state_dict().items()}
    before_bank = loss_fn.text_bank.memory.clone()
    out = pretrain_step(
        model, loss_fn, opt, _batch(model), generator=negative_generator(0, 0, 0, 0), clip_norm=1e-3
    )
    assert not out.skipped and out.clipped and math.isfinite(out.grad_norm)
    assert not torch.equal(before_w, model.vis_emb.weight)
    for k, v in model.textual_encoder.state_dict().items():
        assert torch.equal(v, before_text[k]), k  # frozen: untouched
    changed = (loss_fn.text_bank.memory != before_bank).any(dim=1)
    assert changed[:4].all() and not changed[4:].any()


def test_non_finite_loss_skips_everything(tiny_config):
    model, loss_fn, opt = _setup(tiny_config)
    batch = _batch(model)
    batch["video"][0, 0, 0, 0, 0] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bank = loss_fn.video_bank.memory.clone()
    out = pretrain_step(model, loss_fn, opt, batch, generator=negative_generator(0, 0, 0, 0))
    assert out.skipped
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(bank, loss_fn.video_bank.memory)


def test_step_with_temporal_negatives_adds_hard_term(tiny_config):
    model, loss_fn, opt = _setup(tiny_config)
    batch = _batch(model)
    negs = temporal_negatives(batch["video"])
    out = pretrain_step(
        model, loss_fn, opt, batch, generator=negative_generator(0, 0, 0, 0), hard_negatives=negs
    )
    assert "text_hard" in out.terms and out.terms["text_hard"] > 0


def test_non_finite_first_batch_leaves_z_unset(tiny_config):
    model, loss_fn, opt = _setup(tiny_config)
    bad = _batch(model)
    bad["video"][:] = float("nan")
    assert pretrain_step(model, loss_fn, opt, bad, generator=negative_generator(0, 0, 0, 0)).skipped
    assert not loss_fn.z_is_set
    out = pretrain_step(
        model, loss_fn, opt, _batch(model), generator=negative_generator(0, 0, 1, 0)
    )
    assert not out.skipped and loss_fn.z_is_set and math.isfinite(out.terms["loss"])
