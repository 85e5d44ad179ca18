"""`cpd finetune`: config and presets, initialisation, a tiny run end to end, resume, linear mode."""

from __future__ import annotations

import json

import pytest
import torch

from cpd.config import ConfigError
from cpd.models import ModelConfig, ResNet3d, build_model, build_video_model, load_model, save_model
from cpd.train.checkpoint import read_checkpoint
from cpd.train.finetune import build_classifier, finetune
from cpd.train.finetune_config import load_finetune_config
from cpd.train.run import TrainingInterrupted
from cpd.train.state import StopSignal


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_overrides(data_dir, out, *extra):
    """The CPU preset shrunk to seconds: 4-frame 32 px clips, a width-8 r3d10, batch 4."""
    return [
        f"data.split_dir={data_dir / 'ucfTrainTestlist'}",
        "data.num_frames=4",
        "data.stride=2",
        "data.crop_size=32",
        "data.scale_range=[32,40]",
        "model.init=random",
        "model.base_width=8",
        "optim.batch_size=4",
        "schedule.epochs=2",
        "test.num_clips=2",
        "test.num_crops=1",
        "run.log_every=1",
        "run.progress=false",
        "run.tensorboard=false",
        f"run.out={out}",
        *extra,
    ]


def _cfg(data_dir, out, *extra, preset="finetune_synthetic_cpu"):
    return load_finetune_config(preset, tiny_overrides(data_dir, out, *extra))


def _steps(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "step"]


def test_paper_presets_and_config_errors():
    for name, dataset in (("finetune_ucf101_r50", "ucf101"), ("finetune_hmdb51_r50", "hmdb51")):
        cfg = load_finetune_config(name)
        assert cfg.data.dataset == dataset
        assert (cfg.data.num_frames, cfg.data.stride, cfg.data.crop_size) == (16, 4, 224)
        assert (cfg.model.dropout, cfg.optim.lr, cfg.optim.weight_decay) == (0.8, 0.02, 1e-4)
        assert (cfg.optim.batch_size, cfg.schedule.epochs) == (128, 100)
        assert (cfg.schedule.kind, cfg.schedule.patience, cfg.schedule.factor) == (
            "plateau",
            5,
            0.1,
        )
        assert (cfg.test.num_clips, cfg.test.num_crops, cfg.test.crop_size) == (10, 3, 256)
    assert load_finetune_config("linear_synthetic_cpu").mode == "linear_features"
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_finetune_config(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="run.val_every"):
        load_finetune_config(None, ["run.val_every=0"])
    with pytest.raises(ConfigError, match="data.fold"):
        load_finetune_config(None, ["data.fold=4"])


def test_cli_print_config_and_bad_override(capsys):
    from cpd.commands.finetune import main

    assert main(["--config", "finetune_synthetic_cpu", "--print-config", "mode=linear"]) == 0
    assert "mode: linear\n" in capsys.readouterr().out
    assert main(["--config", "finetune_synthetic_cpu", "model.nope=1"]) == 2
    assert "model.nope" in capsys.readouterr().err


def test_init_from_cpd_export_takes_the_visual_encoder(tmp_path, tiny_text_encoder):
    config = ModelConfig(arch="r3d10", base_width=8, text_encoder=tiny_text_encoder,
                         embed_dim=16, text_head_dim=32)  # fmt: skip
    torch.manual_seed(3)
    cpd_model = build_model(config)
    save_model(cpd_model, tmp_path / "export")
    cfg = load_finetune_config(None, [f"model.init={tmp_path / 'export'}", "model.dropout=0.3"])
    model = build_classifier(cfg, 5)
    assert isinstance(model, ResNet3d) and model.num_classes == 5
    assert model.config.num_classes == 5 and model.config.dropout == 0.3
    encoder = cpd_model.visual_encoder.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, encoder[key]), key
    bad = load_finetune_config(None, [f"model.init={tmp_path / 'export'}", "model.arch=r3d18"])
    with pytest.raises(ConfigError, match="model.arch=r3d18"):
        build_classifier(bad, 5)


def test_tiny_run_outputs(tiny_synthetic, tmp_path):
    run_dir = tmp_path / "run"
    results = finetune(_cfg(tiny_synthetic, run_dir))
    for name in ("config.yaml", "metrics.jsonl", "results.json", "last.pt", "export"):
        assert (run_dir / name).exists(), name
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["mode"] == "finetune" and saved["init"] == "random"
    test = saved["test"]
    assert test["num_videos"] == 4 and test["num_failed"] == 0
    assert 0.0 <= test["top1"] <= test["top5"] <= 1.0
    assert set(test["per_class_accuracy"]) == set(json.loads(
        (tiny_synthetic / "dataset.json").read_text())["classes"])  # fmt: skip
    assert saved["protocol"]["num_clips"] == 2 and "version" in saved
    assert results["test"]["top1"] == test["top1"]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "val"] == [1, 2]
    ckpt = read_checkpoint(run_dir / "last.pt")
    assert ckpt["scheduler"]["best"] is not None and ckpt["epoch"] == 2
    # the checkpoint and the export are classifiers that load_model (and cpd test) read
    for path in (run_dir / "last.pt", run_dir / "export"):
        model = load_model(path)
        assert isinstance(model, ResNet3d) and model.num_classes == 8


def test_stop_mid_epoch_and_resume_equals_uninterrupted(tiny_synthetic, tmp_path, monkeypatch):
    # 12 training videos, batch 4: 3 steps per epoch; the stop falls inside epoch 2
    straight = tmp_path / "straight"
    finetune(_cfg(tiny_synthetic, straight, "test.enabled=false"))
    resumed = tmp_path / "resumed"
    real, calls = StopSignal.should_stop, {"n": 0}

    def stop_after_four(self, device):
        real(self, device)
        calls["n"] += 1
        return calls["n"] == 4

    monkeypatch.setattr(StopSignal, "should_stop", stop_after_four)
    with pytest.raises(TrainingInterrupted, match="Resume with"):
        finetune(_cfg(tiny_synthetic, resumed, "test.enabled=false"))
    ckpt = read_checkpoint(resumed / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (1, 1, 4)
    monkeypatch.setattr(StopSignal, "should_stop", real)
    torch.manual_seed(999)  # global state must not matter
    finetune(_cfg(tiny_synthetic, resumed, "test.enabled=false"))
    a, b = _steps(straight), _steps(resumed)
    assert [s["global_step"] for s in b] == [s["global_step"] for s in a] == list(range(1, 7))
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6, abs=1e-6), (x, y)
        assert y["lr"] == x["lr"]
    end_a, end_b = read_checkpoint(straight / "last.pt"), read_checkpoint(resumed / "last.pt")
    for key, value in end_a["model"].items():
        torch.testing.assert_close(end_b["model"][key], value, rtol=1e-5, atol=1e-6)
    assert end_b["scheduler"] == end_a["scheduler"]


@pytest.mark.parametrize("kind", ["step", "cosine"])
def test_step_and_cosine_schedules_set_the_lr_every_step(tiny_synthetic, tmp_path, kind):
    run_dir = tmp_path / "run"
    extra = ["schedule.milestones=[1]"] if kind == "step" else []
    cfg = _cfg(tiny_synthetic, run_dir, f"schedule.kind={kind}", "test.enabled=false", *extra)
    finetune(cfg)
    lrs = [s["lr"] for s in _steps(run_dir)]
    assert lrs[0] == pytest.approx(cfg.optim.lr) and lrs[-1] < lrs[0]
    assert lrs == sorted(lrs, reverse=True)


def test_linear_mode_leaves_the_encoder_bit_identical(tiny_synthetic, tmp_path):
    # start from a classifier export (an official finetuning checkpoint goes the same way)
    torch.manual_seed(5)
    config = ModelConfig(arch="r3d10", base_width=8, num_classes=3)
    start = build_video_model(config)
    start.config = config
    with torch.no_grad():  # non-trivial BatchNorm statistics, which must not move
        for m in start.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    save_model(start, tmp_path / "start")
    run_dir = tmp_path / "linear"
    finetune(_cfg(tiny_synthetic, run_dir, "mode=linear", f"model.init={tmp_path / 'start'}",
                  "model.arch=r3d10", "model.dropout=0.0", "optim.lr=0.5"))  # fmt: skip
    before, after = start.state_dict(), load_model(run_dir / "export").state_dict()
    for key, value in after.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(value, before[key]), key  # weights and BN buffers, bit for bit
    assert after["fc.weight"].shape == (8, start.num_features)
    ckpt = read_checkpoint(run_dir / "last.pt")
    assert ckpt["global_step"] == 6


def _dist_worker(rank: int, port: int, overrides: list[str]) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")  # fmt: skip
    finetune(load_finetune_config("finetune_synthetic_cpu", overrides))


@pytest.mark.dist
def test_two_processes_then_test_equals_one_process_cpd_test(tiny_synthetic, tmp_path):
    import argparse

    import torch.multiprocessing as mp

    from cpd import dist
    from cpd.commands.test import add_arguments, run

    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tiny_synthetic, run_dir, "schedule.epochs=1",
                               "data.cache_frames=false", "run.threads=1")  # fmt: skip
    mp.spawn(_dist_worker, args=(dist.find_free_port(), overrides), nprocs=2)
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["world_size"] == 2 and saved["test"]["num_videos"] == 4
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(run_dir / "export"), "--dataset", "ucf-layout",
                              "--split-dir", str(tiny_synthetic / "ucfTrainTestlist"),
                              "--num-clips", "2", "--num-crops", "1", "--num-frames", "4",
                              "--stride", "2", "--crop-size", "32", "--workers", "0",
                              "--quiet", "--out", str(tmp_path / "test")])  # fmt: skip
    assert run(args) == 0
    tested = json.loads((tmp_path / "test" / "results.json").read_text())["splits"]["1"]
    assert tested["top1"] == pytest.approx(saved["test"]["top1"])
    assert tested["top5"] == pytest.approx(saved["test"]["top5"])
