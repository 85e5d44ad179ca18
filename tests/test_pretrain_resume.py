"""Resuming `cpd pretrain`: mid-epoch stops reproduce the uninterrupted run, SIGTERM, fallback."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cpd.train.checkpoint import read_checkpoint
from cpd.train.config import load_pretrain_config
from cpd.train.pretrain import TrainingInterrupted, pretrain
from cpd.train.state import StopSignal


def _steps(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "step"]


def _config(overrides, run_dir, *extra):
    return load_pretrain_config(
        "pretrain_synthetic_cpu", [*overrides, f"run.out={run_dir}", *extra]
    )


def test_stop_mid_epoch_and_resume_equals_uninterrupted(
    tiny_pretrain_overrides, tmp_path, monkeypatch
):
    # Stage II (text encoder training, with dropout) and hard negatives are on, and the stop
    # falls inside epoch 2: the resumed run must skip the step already done, redraw nothing.
    extra = ["loss.hard_shuffle=true", "run.val_every=0"]
    straight = tmp_path / "straight"
    pretrain(_config(tiny_pretrain_overrides, straight, *extra))

    resumed = tmp_path / "resumed"
    real = StopSignal.should_stop
    calls = {"n": 0}

    def stop_after_four(self, device):
        real(self, device)
        calls["n"] += 1
        return calls["n"] == 4  # global step 4 = epoch 2, step 1 of 3

    monkeypatch.setattr(StopSignal, "should_stop", stop_after_four)
    with pytest.raises(TrainingInterrupted, match="Resume with"):
        pretrain(_config(tiny_pretrain_overrides, resumed, *extra))
    ckpt = read_checkpoint(resumed / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (1, 1, 4)
    monkeypatch.setattr(StopSignal, "should_stop", real)
    torch.manual_seed(1234)  # global state must not matter
    pretrain(_config(tiny_pretrain_overrides, resumed, *extra))

    a, b = _steps(straight), _steps(resumed)
    assert [s["global_step"] for s in b] == [s["global_step"] for s in a] == list(range(1, 7))
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6, abs=1e-6), (x, y)
        assert y["lr"] == x["lr"]
    end_a, end_b = read_checkpoint(straight / "last.pt"), read_checkpoint(resumed / "last.pt")
    for part in ("model", "loss"):
        for key, value in end_a[part].items():
            torch.testing.assert_close(end_b[part][key], value, rtol=1e-5, atol=1e-6)


def test_corrupt_last_checkpoint_falls_back(tiny_pretrain_overrides, tmp_path, caplog):
    run_dir = tmp_path / "run"
    extra = ["schedule.epochs=1", "run.save_every=1", "run.val_every=0"]
    pretrain(_config(tiny_pretrain_overrides, run_dir, *extra))
    assert (run_dir / "epoch_0001.pt").exists()
    (run_dir / "last.pt").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.ERROR):
        pretrain(_config(tiny_pretrain_overrides, run_dir, "schedule.epochs=2", "run.val_every=0"))
    assert any("last.pt" in r.getMessage() for r in caplog.records)
    steps = _steps(run_dir)
    assert [s["global_step"] for s in steps] == list(range(1, 7))  # went on from epoch 1
    assert read_checkpoint(run_dir / "last.pt")["epoch"] == 2


def _command() -> list[str]:
    from cpd import cli

    # `cpd pretrain` once the CLI lists it; the module itself until then
    if "pretrain" in getattr(cli, "COMMANDS", {}):
        return [sys.executable, "-m", "cpd", "pretrain"]
    return [sys.executable, "-m", "cpd.commands.pretrain"]


def _finished_steps(metrics) -> int:
    """Step records in ``metrics.jsonl`` (complete lines only: the run may be mid-write)."""
    if not metrics.exists():
        return 0
    lines = metrics.read_text(encoding="utf-8").split("\n")[:-1]
    return sum(json.loads(line)["kind"] == "step" for line in lines)


def _wait_for_steps(proc, metrics, n: int, log, timeout: float = 600.0) -> None:
    """Until the run has logged ``n`` finished steps: the run writes and flushes a step's record
    right after the step, with its SIGTERM handler installed: from then on the run handles one.
    Fails if the run exits first or is not there within ``timeout`` seconds (never hangs)."""
    deadline = time.monotonic() + timeout
    while _finished_steps(metrics) < n:
        if proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before step {n}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no step {n} within {timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.02)


def test_sigterm_stops_with_a_checkpoint_then_resume_finishes(tiny_pretrain_overrides, tmp_path):
    run_dir = tmp_path / "run"
    # batch 2: 6 steps per epoch, stage I only (fast steps, ~20 ms each); enough epochs that
    # the run is still going when the signal, sent right after step 2, reaches it
    epochs = 10
    args = [*tiny_pretrain_overrides, f"run.out={run_dir}", "optim.batch_size=2",
            f"schedule.epochs={epochs}", "schedule.unfreeze_epoch=null",
            "run.val_every=0"]  # fmt: skip
    cmd = [*_command(), "--config", "pretrain_synthetic_cpu", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # output to files, not pipes: a pipe nobody reads until the end could block the run
    log = tmp_path / "stderr.txt"
    with open(tmp_path / "stdout.txt", "w") as out, open(log, "w") as errors:
        proc = subprocess.Popen(cmd, stdout=out, stderr=errors, env=env, text=True)
    try:
        _wait_for_steps(proc, run_dir / "metrics.jsonl", 2, log)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        proc.kill()
    err = log.read_text()
    assert proc.returncode == 3, err  # stopped by a signal, with a checkpoint
    assert "stopped by SIGTERM" in err and "Resume with" in err
    ckpt = read_checkpoint(run_dir / "last.pt")
    done = ckpt["global_step"]
    assert 2 <= done < 6 * epochs
    assert ckpt["epoch"] * 6 + ckpt["step_in_epoch"] == done
    assert [s["global_step"] for s in _steps(run_dir)] == list(range(1, done + 1))

    pretrain(load_pretrain_config(str(run_dir / "config.yaml")))  # the resume the message names
    steps = _steps(run_dir)
    assert [s["global_step"] for s in steps] == list(range(1, 6 * epochs + 1))
    assert sorted((s["epoch"], s["step"]) for s in steps) == [
        (e, i) for e in range(epochs) for i in range(6)
    ]
    assert read_checkpoint(run_dir / "last.pt")["epoch"] == epochs
