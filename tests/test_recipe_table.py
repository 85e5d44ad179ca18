"""The README's recipe table is the presets: every row that names a key holds the value the
paper presets resolve to (a change to either that leaves the other behind fails here)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from cpd.config import to_dict
from cpd.train.config import load_pretrain_config
from cpd.train.finetune_config import load_finetune_config

README = Path(__file__).resolve().parents[1] / "README.md"


def recipe_rows() -> list[tuple[str, str, str]]:
    """``(preset kind, dotted key, value text)`` of the table's rows that name a key."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## The paper's recipe, point by point", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[2].startswith("`") or cells[2] == "`cpd` key":
            continue
        kind, key = cells[2].strip("`").split()
        rows.append((kind, key, cells[3].strip("`")))
    return rows


def lookup(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def same(value, text: str) -> bool:
    expected = yaml.safe_load(text)
    if isinstance(value, float) or isinstance(expected, float):
        return math.isclose(float(value), float(expected), rel_tol=1e-12)
    return value == expected


def test_the_table_pins_both_presets():
    rows = recipe_rows()
    assert len(rows) >= 35  # the table is parsed, not silently skipped
    presets = {
        "pretrain": [to_dict(load_pretrain_config("pretrain_instagram_r50"))],
        "finetune": [
            to_dict(load_finetune_config(name))
            for name in ("finetune_ucf101_r50", "finetune_hmdb51_r50")
        ],  # fmt: skip
    }
    for kind, key, text in rows:
        for resolved in presets[kind]:
            assert same(lookup(resolved, key), text), (kind, key, lookup(resolved, key), text)


@pytest.mark.parametrize("drifted", ["optim.text_lr=3.0e-06", "model.shortcut_grad=true"])
def test_a_drifted_preset_is_caught(drifted):
    resolved = to_dict(load_pretrain_config("pretrain_instagram_r50", [drifted]))
    key = drifted.split("=")[0]
    (text,) = [t for kind, k, t in recipe_rows() if kind == "pretrain" and k == key]
    assert not same(lookup(resolved, key), text)
