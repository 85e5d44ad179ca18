"""The flip probability of training clips: the config's, else the dataset's own, else 0.5."""

from __future__ import annotations

import json
from pathlib import Path

from cpd.train.finetune_build import dataset_folders
from cpd.train.finetune_config import FinetuneDataConfig
from cpd.train.loader import resolve_hflip


def _declare(folder: Path, hflip: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({"hflip": hflip}))
    return folder


def test_the_config_wins_then_the_first_declaring_folder_then_half(tmp_path):
    quiet, loud = tmp_path / "quiet", _declare(tmp_path / "loud", False)
    quiet.mkdir()
    assert resolve_hflip(0.25, [loud]) == 0.25
    assert resolve_hflip(None, [quiet, loud]) == 0.0
    assert resolve_hflip(None, [_declare(tmp_path / "yes", True)]) == 0.5
    assert resolve_hflip(None, [quiet]) == 0.5
    assert resolve_hflip(None, []) == 0.5


def test_a_finetune_looks_beside_its_lists_and_in_its_video_root(tmp_path):
    cfg = FinetuneDataConfig(split_dir=str(tmp_path / "data" / "lists"),
                             video_root=str(tmp_path / "data" / "videos"))  # fmt: skip
    folders = dataset_folders(cfg)
    assert folders == [tmp_path / "data", tmp_path / "data" / "videos", tmp_path / "data"]
    _declare(tmp_path / "data", 0)
    assert resolve_hflip(None, folders) == 0.0
