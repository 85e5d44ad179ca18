"""`cpd pretrain`: configuration, a whole tiny run and its outputs, the curriculum, NaN guard."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import cpd
from cpd.commands import pretrain as command
from cpd.config import ConfigError
from cpd.train import pretrain as engine
from cpd.train.checkpoint import read_checkpoint
from cpd.train.config import load_pretrain_config
from cpd.train.pretrain import TrainingDiverged, pretrain
from cpd.train.schedule import step_lr


def _lines(run_dir, kind):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_help_lists_sections_and_print_config(capsys):
    for section in ("data", "model", "loss", "optim", "schedule", "run", "--print-config"):
        assert section in command.__doc__
    code = command.main(["--config", "pretrain_synthetic_cpu", "--print-config", "optim.lr=0.02"])
    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 0.02
    assert printed["model"]["arch"] == "r3d10"
    assert set(printed) == {"data", "model", "loss", "optim", "schedule", "run"}


def test_config_errors_name_the_key(capsys):
    assert command.main(["--print-config", "optim.lrr=1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err
    assert command.main(["--config", "no_such_preset", "--print-config"]) == 2
    assert "pretrain_synthetic_cpu" in capsys.readouterr().err  # lists the presets
    with pytest.raises(ConfigError, match="schedule.epochs"):
        load_pretrain_config(None, ["schedule.epochs=0"])


def test_instagram_preset_is_the_paper_recipe():
    cfg = load_pretrain_config("pretrain_instagram_r50")
    assert (cfg.model.arch, cfg.model.text_encoder) == ("r3d50", "distilbert-base-uncased")
    assert (cfg.data.num_frames, cfg.data.stride, cfg.data.crop_size) == (8, 4, 224)
    assert (cfg.optim.batch_size, cfg.optim.lr, cfg.optim.momentum) == (256, 0.1, 0.9)
    assert (cfg.optim.weight_decay, cfg.optim.clip_norm) == (1e-4, 20.0)
    assert cfg.schedule.milestones == [100, 201, 250] and cfg.schedule.epochs == 300
    assert cfg.schedule.unfreeze_epoch == 150 and cfg.optim.text_lr == pytest.approx(3e-5)
    assert (cfg.loss.num_negatives, cfg.loss.temperature, cfg.loss.momentum) == (16384, 0.07, 0.5)


def test_batch_of_one_per_process_is_a_config_error(tiny_pretrain_overrides, tmp_path):
    cfg = load_pretrain_config(
        "pretrain_synthetic_cpu",
        [*tiny_pretrain_overrides, "optim.batch_size=1", f"run.out={tmp_path}"],
    )
    with pytest.raises(ConfigError, match="BatchNorm1d"):
        pretrain(cfg)


def test_tiny_run_outputs_curriculum_and_export(tiny_pretrain_overrides, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*tiny_pretrain_overrides, f"run.out={run_dir}", "run.tensorboard=true"]
    cfg = load_pretrain_config("pretrain_synthetic_cpu", overrides)
    results = pretrain(cfg)

    # run directory: resolved config with version + git revision, metrics, TensorBoard
    text = (run_dir / "config.yaml").read_text()
    assert text.startswith(f"# cpd {cpd.__version__}, git ")
    assert load_pretrain_config(str(run_dir / "config.yaml")) == cfg
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    steps = _lines(run_dir, "step")
    assert [s["global_step"] for s in steps] == list(range(1, 7))  # 12 pairs / batch 4, 2 epochs
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in steps)
    # lr: a pure function of (epoch, step), decayed at the milestone; text lr 0 while frozen
    for s in steps:
        assert s["lr"] == pytest.approx(step_lr(0.02, s["epoch"] + s["step"] / 3, [1]))
        assert (s["text_lr"] > 0) == (s["epoch"] >= 1)
    events = [e for e in _lines(run_dir, "event") if e["event"] == "text_encoder"]
    assert [(e["epoch"], e["trainable"]) for e in events] == [(0, False), (1, True)]
    # validation after each epoch, exact pair count; final metrics in results.json
    vals = _lines(run_dir, "val")
    assert [v["epoch"] for v in vals] == [1, 2]
    assert vals[-1]["t2v_num_queries"] == 4 and 0 <= vals[-1]["t2v_r1"] <= 1
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["final"]["val_t2v_r1"] == vals[-1]["t2v_r1"] == results["final"]["val_t2v_r1"]
    assert saved["seed"] == 0 and saved["version"] == cpd.__version__

    # checkpoint: everything a resume needs; export and checkpoint load to the same weights
    ckpt = read_checkpoint(run_dir / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (2, 0, 6)
    assert {"optimizer", "loss", "rng", "config", "version"} <= set(ckpt)
    assert ckpt["loss"]["z_video"].item() > 0
    exported = cpd.load_model(run_dir / "export")
    from_ckpt = cpd.load_model(run_dir / "last.pt")
    for key, value in exported.state_dict().items():
        assert torch.equal(value, from_ckpt.state_dict()[key]), key
        assert torch.equal(value, ckpt["model"][key]), key
    # the text encoder trained in stage II only
    initial = cpd.models.build_model(cfg.model).textual_encoder.state_dict()
    trained = exported.textual_encoder.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)


def test_non_finite_steps_stop_the_run(tiny_pretrain_overrides, tmp_path, monkeypatch):
    real_step = engine.pretrain_step

    def poisoned(model, loss_fn, optimizer, batch, **kwargs):
        batch = dict(batch, video=torch.full_like(batch["video"], float("nan")))
        return real_step(model, loss_fn, optimizer, batch, **kwargs)

    monkeypatch.setattr(engine, "pretrain_step", poisoned)
    overrides = [*tiny_pretrain_overrides, f"run.out={tmp_path}", "run.max_bad_steps=2"]
    cfg = load_pretrain_config("pretrain_synthetic_cpu", overrides)
    with pytest.raises(TrainingDiverged, match="2 non-finite steps in a row"):
        pretrain(cfg)
    skipped = [e for e in (_lines(tmp_path, "event")) if e["event"] == "skipped_step"]
    assert len(skipped) == 2
    assert not (tmp_path / "last.pt").exists()  # nothing half-trained was saved


def test_infonce_run_trains_its_temperature(tiny_pretrain_overrides, tmp_path):
    """The synthetic preset's loss: in-batch InfoNCE, whose learnable temperature must train."""
    overrides = [*tiny_pretrain_overrides, f"run.out={tmp_path}", "loss.kind=infonce",
                 "schedule.unfreeze_epoch=null", "run.val_every=0"]  # fmt: skip
    results = pretrain(load_pretrain_config("pretrain_synthetic_cpu", overrides))
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    scale = [v for k, v in ckpt["loss"].items() if "logit_scale" in k]
    assert len(scale) == 1 and not torch.isclose(scale[0], torch.log(torch.tensor(1 / 0.07)))
    assert results["final"]["train_skipped_steps"] == 0


def test_adamw_and_fixed_temperature_run(tiny_pretrain_overrides, tmp_path):
    """optim.optimizer=adamw trains with AdamW state; loss.learn_temperature=false keeps T."""
    overrides = [*tiny_pretrain_overrides, f"run.out={tmp_path}", "loss.kind=infonce",
                 "loss.learn_temperature=false", "optim.optimizer=adamw", "optim.lr=1e-3",
                 "schedule.unfreeze_epoch=null", "run.val_every=0"]  # fmt: skip
    cfg = load_pretrain_config("pretrain_synthetic_cpu", overrides)
    pretrain(cfg)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    state = ckpt["optimizer"]["state"]
    assert state and all("exp_avg_sq" in s for s in state.values())  # Adam moments, not SGD's
    scale = [v for k, v in ckpt["loss"].items() if "logit_scale" in k]
    assert len(scale) == 1 and torch.isclose(scale[0], torch.log(torch.tensor(1 / 0.07)))
