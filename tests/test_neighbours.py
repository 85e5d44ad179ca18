"""Batches of neighbours: look-alike videos and near captions, and pretraining batching by
them."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from cpd.config import ConfigError
from cpd.data import read_caption_manifest
from cpd.data.datasets import VideoCaptionDataset
from cpd.train import pretrain as engine
from cpd.train.config import load_pretrain_config
from cpd.train.neighbours import appearance_features, neighbour_groups


def test_groups_are_nearest_neighbours_and_cover_every_row():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 16, generator=g), dim=1)
    rows = torch.cat([c + 0.05 * torch.randn(4, 16, generator=g) for c in centres])
    feats = F.normalize(rows[torch.randperm(12, generator=g)], dim=1)
    cluster = (feats @ centres.T).argmax(1).tolist()
    groups = neighbour_groups(feats, 4, seed=0)
    assert sorted(groups) == [0] * 4 + [1] * 4 + [2] * 4  # every row once, groups of 4
    for gid in range(3):  # each group is one cluster
        assert len({c for c, x in zip(cluster, groups, strict=True) if x == gid}) == 1
    assert neighbour_groups(feats, 4, seed=0) == groups  # a function of the seed
    assert sorted(neighbour_groups(feats[:10], 4, seed=1)).count(2) == 2  # the last is smaller


def _spy_on_train_groups(monkeypatch) -> dict:
    """``seen["groups"]``: the groups pretraining hands its training loader."""
    seen = {}
    real = engine.make_loader

    def spy(dataset, **kwargs):
        if kwargs.get("train"):
            seen["groups"] = kwargs.get("groups")
        return real(dataset, **kwargs)

    monkeypatch.setattr(engine, "make_loader", spy)
    return seen


def test_pretraining_batches_caption_neighbours(tiny_pretrain_overrides, tmp_path, monkeypatch):
    seen = _spy_on_train_groups(monkeypatch)
    cfg = load_pretrain_config("pretrain_synthetic_cpu", [
        *tiny_pretrain_overrides, "data.video_neighbours=0", "data.caption_neighbours=4",
        "schedule.epochs=1", "run.val_every=0", f"run.out={tmp_path / 'run'}"])  # fmt: skip
    engine.pretrain(cfg)
    groups = seen["groups"]
    assert groups is not None and len(groups) == 12
    assert sorted(groups.count(x) for x in set(groups)) == [4, 4, 4]
    with pytest.raises(ConfigError, match="choose one"):
        engine.pretrain(load_pretrain_config("pretrain_synthetic_cpu", [
            *tiny_pretrain_overrides, "data.caption_neighbours=4",
            f"run.out={tmp_path / 'other'}"]))  # fmt: skip


def test_look_alike_videos_group_as_the_synthetic_sets_appearance_groups(tiny_synthetic):
    # cpd synth renders each appearance with 4 motions; the descriptor knows nothing of that
    rows = [json.loads(x) for x in (tiny_synthetic / "captions.jsonl").read_text().splitlines()]
    records = read_caption_manifest(tiny_synthetic / "captions.jsonl", tiny_synthetic, None)
    feats = appearance_features(VideoCaptionDataset(records, None, train=True))
    groups = neighbour_groups(feats, 4, seed=0)
    members: dict[int, list[int]] = {}
    for gid, row in zip(groups, rows, strict=True):
        members.setdefault(gid, []).append(row["group"])
    assert sorted(len(m) for m in members.values()) == [4, 4, 4, 4]
    assert all(len(set(m)) == 1 for m in members.values()), members
    assert all(
        len({r["motion"] for r in rows if r["group"] == m[0]}) == 4 for m in members.values()
    )


def test_pretraining_batches_look_alike_videos(tiny_pretrain_overrides, tmp_path, monkeypatch):
    seen = _spy_on_train_groups(monkeypatch)
    cfg = load_pretrain_config("pretrain_synthetic_cpu", [
        *tiny_pretrain_overrides, "data.group_by=null", "data.video_neighbours=4",
        "schedule.epochs=1", "run.val_every=0", f"run.out={tmp_path / 'run'}"])  # fmt: skip
    engine.pretrain(cfg)
    assert sorted(seen["groups"].count(x) for x in set(seen["groups"])) == [4, 4, 4]
    with pytest.raises(ConfigError, match="choose one"):
        engine.pretrain(load_pretrain_config("pretrain_synthetic_cpu", [
            *tiny_pretrain_overrides, "data.group_by=null", "data.video_neighbours=4",
            "data.caption_neighbours=4", f"run.out={tmp_path / 'other'}"]))  # fmt: skip


def test_the_preset_batches_the_same_without_the_group_column(
    tiny_pretrain_overrides, tiny_synthetic, tmp_path, monkeypatch
):
    """``pretrain_synthetic_cpu`` composes its batches from the videos: deleting the synthetic
    set's ``group`` column from the manifest changes nothing."""
    seen = _spy_on_train_groups(monkeypatch)
    rows = [json.loads(x) for x in (tiny_synthetic / "captions.jsonl").read_text().splitlines()]
    assert all("group" in r for r in rows)
    bare = tmp_path / "no_group.jsonl"
    bare.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "group"}) + "\n"
                            for r in rows))  # fmt: skip
    groups = []
    for name, manifest in (("with", tiny_synthetic / "captions.jsonl"), ("without", bare)):
        engine.pretrain(load_pretrain_config("pretrain_synthetic_cpu", [
            *tiny_pretrain_overrides, f"data.manifest={manifest}",
            f"data.video_root={tiny_synthetic}", "schedule.epochs=1", "run.val_every=0",
            f"run.out={tmp_path / name}"]))  # fmt: skip
        groups.append(seen["groups"])
    assert groups[0] is not None and groups[0] == groups[1]
    # the preset's groups of 4 look-alike videos
    assert sorted(groups[0].count(x) for x in set(groups[0])) == [4, 4, 4]
