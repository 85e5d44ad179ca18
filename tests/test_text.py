"""Text encoder: offline construction, tokenizer vocabulary, compat mode, pooling, freezing."""

from __future__ import annotations

import pytest
import torch

from cpd.models.text import (
    DISTILBERT,
    TextEncoder,
    build_hf_text_model,
    build_text_encoder,
    load_tokenizer,
    masked_mean,
)
from tests import official_reference as ref

LONG = " ".join(["volleyball"] * 30 + ["spiking", "the", "ball"] * 20)  # > 64 tokens


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return build_text_encoder()  # the packaged all-MiniLM-L6-v2, offline


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DISTILBERT)


def test_distilbert_tokenizer_is_the_uncased_bert_vocabulary(tokenizer):
    assert len(tokenizer) == 30522
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) == (101, 102, 0)
    # well-known bert-base-uncased ids; lower-casing is on
    assert tokenizer.convert_tokens_to_ids(["hello", "world", "[UNK]", "[MASK]"]) == [
        7592,
        2088,
        100,
        103,
    ]
    assert tokenizer("Hello WORLD")["input_ids"] == [101, 7592, 2088, 102]


def test_distilbert_is_built_offline_from_its_configuration():
    model = build_hf_text_model(DISTILBERT, pretrained=False)  # no init: fast, shapes only
    cfg = model.config
    assert (cfg.vocab_size, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.hidden_dim) == (
        30522,
        768,
        6,
        12,
        3072,
    )
    official = {
        k[len("module.textual_encoder.") :]: tuple(shape)
        for k, (shape, _) in ref.load_schema(ref.PRETRAIN_SCHEMA).items()
        if k.startswith("module.textual_encoder.")
    }
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official


def test_compat_tokenize_matches_official_padding_and_truncation():
    enc = build_text_encoder(DISTILBERT, compat=True, pretrained=False)
    captions = ["A dog.", LONG, ""]
    tokens = enc.tokenize(captions)
    assert tokens["input_ids"].shape == (3, 64) and tokens["input_ids"].dtype == torch.long
    assert torch.equal(tokens["input_ids"], ref.official_token_ids(enc.tokenizer, captions))
    assert tokens["input_ids"][1, -1] != 102  # official cut drops the final [SEP]
    assert tokens["input_ids"][2, :3].tolist() == [101, 102, 0]
    assert torch.equal(tokens["attention_mask"], (tokens["input_ids"] != 0).long())


def test_normal_tokenize_pads_to_longest_and_keeps_sep(minilm):
    tokens = minilm.tokenize(["a dog", "a dog runs on the beach", LONG])
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    assert ids.shape == (3, 64) and ids[2, -1] == 102
    short = minilm.tokenize(["a dog", "a cat runs"])["input_ids"]
    assert short.shape == (2, 5) and short[0].tolist() == [101, 1037, 3899, 102, 0]
    assert mask[0].sum() == 4 and mask[2].all()
    assert minilm.tokenize("one caption")["input_ids"].shape[0] == 1
    with pytest.raises(TypeError, match="caption 1"):
        minilm.tokenize(["ok", 3])
    with pytest.raises(ValueError):
        minilm.tokenize([])


def test_masked_mean_ignores_padding():
    feats = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    torch.testing.assert_close(
        masked_mean(feats, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]])
    )


def test_pooled_features_do_not_depend_on_batch_padding(minilm):
    minilm.eval()
    alone = minilm.encode_tokens(**minilm.tokenize(["a dog"]))
    batched = minilm.encode_tokens(
        **minilm.tokenize(["a dog", "a much longer caption about a dog"])
    )
    assert alone.shape == (1, minilm.hidden_size) == (1, 384)
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)


def test_compat_mode_calls_the_encoder_without_mask(minilm):
    compat = TextEncoder(minilm.model, minilm.tokenizer, compat=True).eval()
    tokens = compat.tokenize(["a dog runs"])
    assert tokens["input_ids"].shape == (1, 64)
    with torch.no_grad():
        expected_tokens = minilm.model(input_ids=tokens["input_ids"])[0]  # padding attended to
        expected = masked_mean(expected_tokens, tokens["input_ids"] != 0)
        got = compat.encode_tokens(**tokens)
        masked = minilm.encode_tokens(**tokens)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, masked, atol=1e-4)  # the quirk is real, so compat matters


def test_freeze_turns_off_grad_and_dropout_and_survives_train(minilm):
    parent = torch.nn.Sequential(minilm)
    minilm.freeze()
    try:
        parent.train()
        assert minilm.frozen and not minilm.model.training
        assert not any(p.requires_grad for p in minilm.parameters())
        tokens = minilm.tokenize(["a dog runs", "two cats"])
        a, b = minilm.encode_tokens(**tokens), minilm.encode_tokens(**tokens)
        assert not a.requires_grad and torch.equal(a, b)  # no dropout
        minilm.unfreeze()
        assert minilm.model.training and all(p.requires_grad for p in minilm.parameters())
        out = minilm.encode_tokens(**tokens)
        assert out.requires_grad
        torch.manual_seed(0)  # dropout draws from the global generator inside transformers
        assert not torch.equal(out, minilm.encode_tokens(**tokens))  # dropout on again
    finally:
        minilm.unfreeze()
        minilm.eval()
