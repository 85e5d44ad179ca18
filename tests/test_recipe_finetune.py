"""`cpd finetune` against the official recipe (issue 12, items 6-8).

6. Defaults: gradients clipped at norm 20 and the plateau lr floored at 1e-6 (official
   ``--clip_gradient 20``, ``ReduceLROnPlateau(..., min_lr=1e-6)``); partial finetuning
   ``model.train_from`` as the official ``--ft_begin_index`` / ``get_fine_tuning_parameters``.
7. ``mode=linear_official``: only ``fc`` trains, BatchNorm in train mode (running statistics
   move), dropout 0.8, lr 2; ``mode=linear``: nothing in the encoder moves.
8. Validation on one random training-style clip per video, from (seed, epoch, index); the
   centre clip as ``val.clip=centre``.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import cpd.video
from cpd.config import ConfigError
from cpd.models import ModelConfig, build_video_model, load_model, save_model
from cpd.train.checkpoint import read_checkpoint
from cpd.train.finetune import finetune
from cpd.train.finetune_build import build_data, build_optimizer
from cpd.train.finetune_config import load_finetune_config
from tests.test_finetune import tiny_overrides


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(data_dir, out, *extra):
    """The built-in defaults (not a preset: those pin some values), shrunk to seconds."""
    base = ["data.dataset=ucf-layout", "data.hflip=0", "data.workers=0", "model.arch=r3d10",
            "run.save_every=0"]  # fmt: skip
    return load_finetune_config(None, base + tiny_overrides(data_dir, out, *extra))


def _start(tmp_path, seed=5):
    """A saved r3d10 classifier with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    config = ModelConfig(arch="r3d10", base_width=8, num_classes=3)
    start = build_video_model(config)
    start.config = config
    with torch.no_grad():
        for m in start.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    save_model(start, tmp_path / "start")
    return start


def _is_bn_stat(key):
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


# --- 6. defaults and partial finetuning ---------------------------------------------------


def test_defaults_clip_at_20_and_floor_the_plateau_lr_at_1e6():
    for preset in (None, "finetune_ucf101_r50", "finetune_hmdb51_r50"):
        cfg = load_finetune_config(preset)
        assert cfg.optim.clip_norm == 20.0, preset
        assert cfg.schedule.min_lr == 1e-6, preset
        assert cfg.model.train_from == 0, preset  # everything trains, as official's default
        assert cfg.optim.lr == 0.02, preset


def test_the_run_clips_at_20_and_its_plateau_schedule_stops_at_1e6(
    tiny_synthetic, tmp_path, monkeypatch
):
    import cpd.train.finetune as ft

    seen = []
    real = ft.finetune_step

    def recording(*args, **kwargs):
        seen.append(kwargs["clip_norm"])
        return real(*args, **kwargs)

    monkeypatch.setattr(ft, "finetune_step", recording)
    run_dir = tmp_path / "run"
    finetune(_tiny(tiny_synthetic, run_dir, "test.enabled=false", "schedule.epochs=1"))
    assert seen and set(seen) == {20.0}
    assert read_checkpoint(run_dir / "last.pt")["scheduler"]["min_lrs"] == [1e-6]


def _official_trained(names, ft_begin_index):
    """The names the official get_fine_tuning_parameters puts in the optimizer (substring
    match of layer{i}, i >= ft_begin_index, or fc; everything for 0)."""
    if ft_begin_index == 0:
        return set(names)
    modules = [f"layer{i}" for i in range(ft_begin_index, 5)] + ["fc"]
    return {n for n in names if any(m in n for m in modules)}


@pytest.mark.parametrize("train_from", [0, 1, 2, 3, 4, 5])
def test_train_from_puts_exactly_the_official_parameters_in_the_optimizer(train_from):
    from cpd.train.finetune_build import freeze_stages  # new with model.train_from

    cfg = load_finetune_config(None, [f"model.train_from={train_from}"])
    for shortcut in ("A", "B"):
        model = build_video_model(ModelConfig(arch="r3d10", base_width=8, num_classes=4,
                                              shortcut=shortcut))  # fmt: skip
        freeze_stages(model, train_from)
        optimizer = build_optimizer(cfg, model)
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        names = dict(model.named_parameters())
        expected = _official_trained(names, train_from)
        assert {n for n, p in names.items() if id(p) in in_optimizer} == expected
        assert {n for n, p in names.items() if p.requires_grad} == expected
        # one lr for all trained parameters (the official function ignores its lr argument)
        assert {g["lr"] for g in optimizer.param_groups} == {0.02}
        if train_from:
            assert not names["conv1.weight"].requires_grad and not names["bn1.weight"].requires_grad


def test_train_from_rejects_bad_values():
    with pytest.raises(ConfigError, match="model.train_from"):
        load_finetune_config(None, ["model.train_from=6"])
    with pytest.raises(ConfigError, match="model.train_from"):
        load_finetune_config(None, ["mode=linear_official", "model.train_from=3"])
    assert load_finetune_config(None, ["mode=linear", "model.train_from=5"]).mode == "linear"


def test_partial_finetuning_leaves_the_frozen_stages_unchanged(tiny_synthetic, tmp_path):
    start = _start(tmp_path)
    run_dir = tmp_path / "ft3"
    finetune(_tiny(tiny_synthetic, run_dir, "model.train_from=3", f"model.init={tmp_path / 'start'}",
                   "test.enabled=false", "optim.lr=0.5"))  # fmt: skip
    before, after = start.state_dict(), load_model(run_dir / "export").state_dict()
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.")
    for key, value in after.items():
        if key.startswith("fc.") or _is_bn_stat(key):
            continue
        if key.startswith(frozen):
            assert torch.equal(value, before[key]), key  # weights and BN affine parameters
        else:
            assert not torch.equal(value, before[key]), key  # layer3, layer4 trained
    # as in the official code the frozen stages' BatchNorm still runs in train mode
    assert not torch.equal(after["layer1.0.bn1.running_mean"], before["layer1.0.bn1.running_mean"])
    assert not torch.equal(after["bn1.running_var"], before["bn1.running_var"])


# --- 7. the official linear protocol ------------------------------------------------------


def test_linear_official_takes_the_official_lr_and_dropout():
    cfg = load_finetune_config(None, ["mode=linear_official"])
    assert (cfg.optim.lr, cfg.model.dropout, cfg.optim.clip_norm) == (2.0, 0.8, 20.0)
    assert load_finetune_config("finetune_ucf101_r50", ["mode=linear_official"]).optim.lr == 2.0
    assert load_finetune_config("finetune_hmdb51_r50", ["mode=linear_official"]).optim.lr == 2.0
    assert load_finetune_config(None, ["mode=linear_official", "optim.lr=20"]).optim.lr == 20.0
    for mode in ("finetune", "linear", "linear_features"):
        assert load_finetune_config(None, [f"mode={mode}"]).optim.lr == 0.02


@pytest.mark.parametrize("mode", ["linear_official", "linear"])
def test_linear_modes_freeze_the_weights_and_only_official_moves_batchnorm(
    mode, tiny_synthetic, tmp_path
):
    start = _start(tmp_path)
    run_dir = tmp_path / mode
    # defaults: linear_official gets lr 2 and dropout 0.8
    finetune(_tiny(tiny_synthetic, run_dir, f"mode={mode}", f"model.init={tmp_path / 'start'}",
                   "test.enabled=false"))  # fmt: skip
    before, after = start.state_dict(), load_model(run_dir / "export").state_dict()
    stats_moved = []
    for key, value in after.items():
        if key.startswith("fc."):
            continue
        if _is_bn_stat(key):
            stats_moved.append(not torch.equal(value, before[key]))
        else:
            assert torch.equal(value, before[key]), key  # conv weights, BN affine: bit for bit
    assert stats_moved
    if mode == "linear_official":  # batch statistics used, running statistics re-estimated
        assert all(stats_moved)
    else:  # eval mode: nothing moves
        assert not any(stats_moved)
    ckpt = read_checkpoint(run_dir / "last.pt")
    assert ckpt["finetune"]["optim"]["lr"] == (2.0 if mode == "linear_official" else 0.02)
    assert ckpt["global_step"] == 6


# --- 8. the validation clip ---------------------------------------------------------------


def test_validation_clip_is_a_random_training_clip_by_default(tiny_synthetic, tmp_path):
    data = build_data(_tiny(tiny_synthetic, tmp_path / "a"))
    val = data.val
    assert val.train and val.clip_args["hflip"] == 0.0  # training-style, never flipped
    assert val.clip_args["scale_range"] == data.train.clip_args["scale_range"] == (32, 40)
    assert [r.path for r in val.records] == [r.path for r in data.test]
    val.set_epoch(1)
    first = val[0]["video"]
    assert first.shape == (3, 4, 32, 32)
    torch.manual_seed(123)  # global random state plays no part
    np.random.seed(123)
    random.seed(123)
    assert torch.equal(val[0]["video"], first)
    val.set_epoch(2)
    assert not torch.equal(val[0]["video"], first)  # a new clip every epoch
    again = build_data(_tiny(tiny_synthetic, tmp_path / "b")).val
    again.set_epoch(1)
    assert torch.equal(again[0]["video"], first)  # from (seed, epoch, index)
    other_seed = build_data(_tiny(tiny_synthetic, tmp_path / "c", "run.seed=7")).val
    other_seed.set_epoch(1)
    assert not torch.equal(other_seed[0]["video"], first)

    centre = build_data(_tiny(tiny_synthetic, tmp_path / "d", "val.clip=centre")).val
    assert not centre.train
    centre.set_epoch(1)
    view = centre[0]["video"]
    assert view.shape == (1, 3, 4, 32, 32)
    centre.set_epoch(2)
    assert torch.equal(centre[0]["video"], view)  # the same centre clip every epoch
    assert not torch.equal(view[0], first)


def test_each_validation_draws_that_epochs_random_clips(tiny_synthetic, tmp_path, monkeypatch):
    test_paths = {str(r.path) for r in build_data(_tiny(tiny_synthetic, tmp_path / "x")).test}
    calls: list[tuple[str, int | None]] = []
    real = cpd.video.load_clip

    def recording(path, *args, **kwargs):
        if str(path) in test_paths:
            assert kwargs["train"] and kwargs["hflip"] == 0.0
            calls.append((str(path), kwargs["seed"]))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cpd.video, "load_clip", recording)
    finetune(_tiny(tiny_synthetic, tmp_path / "one", "test.enabled=false"))
    assert len(calls) == 2 * len(test_paths)  # one clip per test video per epoch
    epoch1, epoch2 = calls[: len(test_paths)], calls[len(test_paths) :]
    assert {p for p, _ in epoch1} == {p for p, _ in epoch2} == test_paths
    assert {s for _, s in epoch1}.isdisjoint({s for _, s in epoch2})
    first = list(calls)
    calls.clear()
    torch.manual_seed(999)
    np.random.seed(999)
    finetune(_tiny(tiny_synthetic, tmp_path / "two", "test.enabled=false"))
    assert calls == first  # the same clips, whatever the global random state
