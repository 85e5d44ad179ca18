"""Checkpoint files: atomic writes, newest-first lookup, fallback past a corrupt file."""

from __future__ import annotations

import logging

import pytest
import torch

from cpd.errors import CheckpointError
from cpd.train.checkpoint import (
    atomic_save,
    checkpoint_candidates,
    load_latest,
    read_checkpoint,
    save_training_checkpoint,
)
from cpd.train.schedule import cosine_lr, step_lr, text_encoder_trainable


def test_atomic_save_leaves_no_temporary_files(tmp_path):
    atomic_save({"w": torch.ones(3)}, tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    assert torch.equal(read_checkpoint(tmp_path / "a.pt")["w"], torch.ones(3))


def test_failed_write_keeps_previous_file(tmp_path):
    atomic_save({"v": 1}, tmp_path / "a.pt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_save({"v": Unpicklable()}, tmp_path / "a.pt")
    assert read_checkpoint(tmp_path / "a.pt") == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_periodic_and_last(tmp_path):
    for epoch in range(1, 5):
        save_training_checkpoint({"epoch": epoch}, tmp_path, epoch, every=2)
    assert [p.name for p in checkpoint_candidates(tmp_path)] == [
        "last.pt",
        "epoch_0004.pt",
        "epoch_0002.pt",
    ]
    path, state = load_latest(tmp_path)
    assert path.name == "last.pt" and state["epoch"] == 4


def test_corrupt_last_falls_back_and_names_file(tmp_path, caplog):
    save_training_checkpoint({"epoch": 2}, tmp_path, 2, every=2)
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.ERROR):
        path, state = load_latest(tmp_path)
    assert path.name == "epoch_0002.pt" and state["epoch"] == 2
    assert "last.pt" in caplog.text


def test_all_corrupt_is_an_error_and_empty_dir_is_none(tmp_path):
    assert load_latest(tmp_path) is None
    (tmp_path / "last.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="last.pt"):
        load_latest(tmp_path)


def test_non_dict_checkpoint_is_rejected(tmp_path):
    torch.save([1, 2], tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        read_checkpoint(tmp_path / "x.pt")


def test_step_lr_matches_paper_milestones():
    ms = (100, 201, 250)
    assert step_lr(0.1, 0, ms) == pytest.approx(0.1)
    assert step_lr(0.1, 99.9, ms) == pytest.approx(0.1)
    assert step_lr(0.1, 100, ms) == pytest.approx(0.01)
    assert step_lr(0.1, 201, ms) == pytest.approx(0.001)
    assert step_lr(0.1, 299, ms) == pytest.approx(0.0001)
    assert step_lr(0.1, 0.5, ms, warmup_epochs=1) == pytest.approx(0.05)


def test_cosine_and_curriculum():
    assert cosine_lr(1.0, 0, 10) == pytest.approx(1.0)
    assert cosine_lr(1.0, 5, 10) == pytest.approx(0.5)
    assert cosine_lr(1.0, 10, 10) == pytest.approx(0.0)
    assert not text_encoder_trainable(149, 150) and text_encoder_trainable(150, 150)
    assert not text_encoder_trainable(10**6, None)
