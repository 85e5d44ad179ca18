"""The paper preset against the official recipe (MCG-NJU/CPD-Video ``main.py``, ``opts.py``,
``models/cpd.py``): the text encoder's learning rate in stage II, the attention mask of the text
path, and per-GPU BatchNorm.

Epochs here are cpd's (0-based): cpd epoch ``e`` is the official epoch ``e + 1``. The official
``adjuest_learning_rate(optimizer, i, opt)`` runs after its epoch ``i``, and its text encoder
gets gradients when ``epoch > ft_bert_ep``, i.e. from our epoch ``ft_bert_ep``.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cpd.config import ConfigError
from cpd.train.config import OptimConfig, load_pretrain_config
from cpd.train.schedule import text_encoder_trainable

PAPER = "pretrain_instagram_r50"


def _official_lrs(epochs, ft_bert_ep, milestones, lr=0.1, lr_bert=3e-4):
    """{official epoch i (1-based): (video lr, text lr) used in it}, as the official loop
    produces them: every parameter group starts at ``lr`` except the text encoder's at 0
    (``get_fine_tuning_parameters``); after each epoch ``i``, ``adjuest_learning_rate`` sets
    a zero lr to ``lr_bert * 0.1`` when ``i + 1 == ft_bert_ep``, then multiplies every group by
    0.1 when ``i`` is a milestone (100, 201, 250 in the released code)."""
    video, text, used = lr, 0.0, {}
    for i in range(1, epochs + 1):
        used[i] = (video, text)
        if i + 1 == ft_bert_ep and text == 0:
            text = lr_bert * 0.1
        gamma = 0.1 if i in milestones else 1.0
        video, text = video * gamma, text * gamma
    return used


def _small_paper_config(tiny_text_encoder, *extra):
    """The paper preset with a small model (the optimizer's groups are what matter here)."""
    return load_pretrain_config(PAPER, [
        "model.arch=r3d10", "model.base_width=8", f"model.text_encoder={tiny_text_encoder}",
        "model.embed_dim=16", "model.text_head_dim=32", *extra,
    ])  # fmt: skip


def _lrs_at(cfg, optimizer, epoch):
    """(main lr, text lr) of ``optimizer`` as the trainer sets them at ``epoch``."""
    from cpd.train.pretrain import lr_factor, set_lr, text_lr_factor

    on = text_encoder_trainable(int(epoch), cfg.schedule.unfreeze_epoch)
    set_lr(optimizer, lr_factor(cfg, epoch), on, text_lr_factor(cfg, epoch))
    main = {g["lr"] for g in optimizer.param_groups if not g["name"].startswith("text")}
    text = {g["lr"] for g in optimizer.param_groups if g["name"].startswith("text")}
    assert len(main) == 1 and len(text) == 1  # decay / no-decay groups agree
    return main.pop(), text.pop()


def _optimizer(cfg):
    from cpd.models import build_model
    from cpd.train.pretrain import build_optimizer

    torch.manual_seed(0)
    return build_optimizer(cfg, build_model(cfg.model), nn.Module())


# --- 1. the text encoder's learning rate -----------------------------------------------------


def test_paper_text_lr_is_set_at_unfreeze_and_decays_only_later(tiny_text_encoder):
    cfg = _small_paper_config(tiny_text_encoder)
    assert cfg.optim.text_lr_schedule == "from_unfreeze"
    opt = _optimizer(cfg)
    expected = {0: 0.0, 99: 0.0, 100: 0.0, 149: 0.0, 150: 3e-5, 200: 3e-5, 201: 3e-6,
                249: 3e-6, 250: 3e-7, 299: 3e-7}  # fmt: skip
    for epoch, want in expected.items():
        for frac in (0.0, 0.5, 0.999):  # constant within an epoch
            _, text = _lrs_at(cfg, opt, epoch + frac)
            assert text == pytest.approx(want, rel=1e-9, abs=0.0), (epoch, frac)


@pytest.mark.parametrize("ft_bert_ep", [2, 50, 99, 100, 101, 102, 150, 200, 201, 202, 251])
def test_text_lr_matches_the_official_loop(tiny_text_encoder, ft_bert_ep):
    """Every epoch of a 300-epoch run, for unfreeze epochs around each milestone (the official
    lr is switched on one epoch before the encoder gets gradients, in the same call that
    applies that epoch's milestone)."""
    cfg = _small_paper_config(tiny_text_encoder, f"schedule.unfreeze_epoch={ft_bert_ep}",
                              "optim.no_decay_norm_bias=true")  # fmt: skip
    opt = _optimizer(cfg)
    official = _official_lrs(300, ft_bert_ep, [100, 201, 250])
    for epoch in range(300):
        video, text = official[epoch + 1]
        if epoch + 1 <= ft_bert_ep:  # official: no gradients for the encoder (no_grad)
            text = 0.0
        got_video, got_text = _lrs_at(cfg, opt, epoch)
        assert got_video == pytest.approx(video, rel=1e-9), epoch
        assert got_text == pytest.approx(text, rel=1e-9, abs=0.0), epoch


def test_global_text_lr_schedule_keeps_the_earlier_rule(tiny_text_encoder):
    """optim.text_lr_schedule=global: text_lr x the main factor (the decay at 100 included)."""
    cfg = _small_paper_config(tiny_text_encoder, "optim.text_lr_schedule=global")
    opt = _optimizer(cfg)
    for epoch, want in {149: 0.0, 150: 3e-6, 201: 3e-7, 250: 3e-8}.items():
        assert _lrs_at(cfg, opt, epoch)[1] == pytest.approx(want, rel=1e-9, abs=0.0)
    with pytest.raises(ConfigError, match="text_lr_schedule"):
        load_pretrain_config(PAPER, ["optim.text_lr_schedule=relative"])


def test_cosine_text_lr_starts_at_text_lr_and_rides_the_rest_of_the_curve():
    from cpd.train.pretrain import lr_factor, text_lr_factor

    for final in (0.0, 0.01):
        cfg = load_pretrain_config(None, ["schedule.kind=cosine", "schedule.warmup_epochs=5",
                                          f"schedule.final_lr={final}"])  # fmt: skip
        start = cfg.schedule.unfreeze_epoch
        assert text_lr_factor(cfg, start) == pytest.approx(1.0)
        assert text_lr_factor(cfg, cfg.schedule.epochs) == pytest.approx(final, abs=1e-12)
        values = [text_lr_factor(cfg, start + e / 4) for e in range(4 * (300 - start) + 1)]
        assert all(a >= b for a, b in zip(values, values[1:], strict=False))
        # the same curve: decay ratios above final_lr are the main lr's
        a, b = 180.0, 260.0
        main = (lr_factor(cfg, b) - final) / (lr_factor(cfg, a) - final)
        text = (text_lr_factor(cfg, b) - final) / (text_lr_factor(cfg, a) - final)
        assert text == pytest.approx(main)
    # unfreezing during the warmup: the warmup ramp, then the main lr's full cosine
    cfg = load_pretrain_config(None, ["schedule.kind=cosine", "schedule.warmup_epochs=10",
                                      "schedule.unfreeze_epoch=4"])  # fmt: skip
    for epoch in (4.0, 7.5, 10.0, 50.0, 299.0):
        assert text_lr_factor(cfg, epoch) == pytest.approx(lr_factor(cfg, epoch))


def test_run_logs_the_official_text_lr(tiny_pretrain_overrides, tmp_path):
    """Through the trainer: a milestone before the unfreeze does not reach the text encoder."""
    overrides = [*tiny_pretrain_overrides, f"run.out={tmp_path}", "schedule.epochs=4",
                 "schedule.milestones=[1]", "schedule.unfreeze_epoch=3", "run.val_every=0",
                 "optim.text_lr=1.0e-5"]  # fmt: skip
    from cpd.train.pretrain import pretrain

    pretrain(load_pretrain_config("pretrain_synthetic_cpu", overrides))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert len(steps) == 12
    for s in steps:
        assert s["lr"] == pytest.approx(0.02 * (0.1 if s["epoch"] >= 1 else 1.0))
        assert s["text_lr"] == (pytest.approx(1e-5) if s["epoch"] >= 3 else 0.0)


# --- 2. the text path: no attention mask ---------------------------------------------------


def test_paper_preset_uses_the_official_unmasked_text_path(tiny_text_encoder):
    """Official ``forward_text_encoder``: ``self.textual_encoder(t)``, no attention mask, on
    captions zero-padded to 64 tokens; the pooled mean is over non-padding tokens."""
    cfg = load_pretrain_config(PAPER)
    assert cfg.model.text_compat is True
    assert cfg.data.max_tokens == cfg.model.text_max_length == 64  # padding is attended to
    from cpd.models import build_model

    small = _small_paper_config(tiny_text_encoder)
    text = build_model(small.model).textual_encoder
    assert text.compat
    calls = []
    hf = text.model
    hook = hf.register_forward_pre_hook(lambda m, a, kw: calls.append(dict(kw)), with_kwargs=True)
    try:
        ids = text.tokenize(["a dog runs", "the cat sleeps on the warm sofa"])["input_ids"]
        assert ids.shape == (2, 64) and (ids[:, -1] == 0).all()
        text.encode_tokens(ids, torch.ones_like(ids))  # a mask given is not passed on
    finally:
        hook.remove()
    assert len(calls) == 1 and calls[0].get("attention_mask") is None


# --- 3. BatchNorm per process ------------------------------------------------------------


def test_batchnorm_is_per_process_by_default():
    assert OptimConfig().sync_bn is False
    assert load_pretrain_config(PAPER).optim.sync_bn is False
    assert load_pretrain_config(PAPER, ["optim.sync_bn=true"]).optim.sync_bn is True


class _Reached(Exception):
    """build() got past the SyncBatchNorm decision."""


@pytest.mark.parametrize(("setting", "converts"), [(None, False), ("false", False),
                                                   ("true", True), ("null", True)])  # fmt: skip
def test_build_converts_to_syncbn_only_when_asked(tiny_pretrain_overrides, tmp_path, monkeypatch,
                                                   setting, converts):  # fmt: skip
    """build() as one of 2 CUDA processes (simulated: it stops before moving the model).
    None: the default; "null": SyncBatchNorm on CUDA with several processes (cpd's earlier
    default)."""
    from cpd.models import CPDModel
    from cpd.train import pretrain as engine
    from cpd.train.log import RunLogger
    from cpd.train.run import Env

    calls = []

    def spy(module, process_group=None):
        calls.append(module)
        return module

    def stop(self, *args, **kwargs):
        raise _Reached

    monkeypatch.setattr(engine.nn.SyncBatchNorm, "convert_sync_batchnorm", spy)
    monkeypatch.setattr(CPDModel, "to", stop)
    extra = [] if setting is None else [f"optim.sync_bn={setting}"]
    cfg = load_pretrain_config("pretrain_synthetic_cpu",
                               [*tiny_pretrain_overrides, f"run.out={tmp_path}", *extra])  # fmt: skip
    env = Env(torch.device("cuda", 0), rank=0, world_size=2, owns_group=False)
    with pytest.raises(_Reached):
        engine.build(cfg, env, tmp_path, RunLogger(tmp_path, enabled=False))
    assert bool(calls) is converts


def test_compat_captions_are_cut_as_the_official_text_path(tmp_path):
    """With model.text_compat the data keeps the first max_tokens ids of the whole encoding
    (a long caption loses its final [SEP]), as TextEncoder.tokenize in compat mode does."""
    from cpd.data import CaptionRecord, VideoCaptionDataset
    from cpd.data.datasets import default_tokenizer, tokenize_captions
    from cpd.models.text import TextEncoder

    tokenizer = default_tokenizer()
    captions = ["a dog", "a very long caption about a dog catching a red frisbee in the park"]
    encoder = TextEncoder(torch.nn.Identity(), tokenizer, compat=True, max_length=8)
    want = encoder.tokenize(captions)["input_ids"]
    ids, mask = tokenize_captions(captions, tokenizer, 8, official=True)
    assert torch.equal(ids.long(), want)
    assert ids[1, -1] != tokenizer.sep_token_id  # cut, not closed with [SEP]
    assert mask.sum(1).tolist() == [4, 8]
    plain, _ = tokenize_captions(captions, tokenizer, 8)
    assert plain[1, -1] == tokenizer.sep_token_id  # the default keeps a final [SEP]
    records = [CaptionRecord(i, str(i), str(tmp_path / f"{i}.mp4"), c, "train")
               for i, c in enumerate(captions)]  # fmt: skip
    ds = VideoCaptionDataset(records, tokenizer, max_tokens=8, official_tokens=True)
    assert torch.equal(ds.input_ids.long(), want)
