"""The synthetic dataset: determinism, on-disk formats, decodable videos, real motion."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import av
import numpy as np
import pytest

from cpd.data.render import render_video
from cpd.data.synthetic import (
    COLOUR_WORDS,
    MOTION_WORDS,
    MOTIONS,
    SHAPE_WORDS,
    class_words,
    conjugate,
    make_caption,
    make_video_specs,
    write_synthetic_dataset,
)
from cpd.errors import CPDError

SMALL = {"num_videos": 16, "width": 64, "height": 48, "num_frames": 20, "progress": False}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "out"
    return out, write_synthetic_dataset(out, seed=3, workers=1, **SMALL)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _spec(motion: str, shape: str = "square", seed: int = 0):
    """A spec of the default-size dataset with this motion (and shape), found by search."""
    for spec in make_video_specs(480, seed=seed):
        if spec.motion == motion and spec.look.shape == shape:
            return spec
    raise AssertionError(f"no {motion} {shape} in the dataset")


def _centroids(alpha: np.ndarray) -> np.ndarray:
    """Centroid (x, y) of the glyph coverage, per frame: ``[T, 2]``."""
    ys, xs = np.mgrid[0 : alpha.shape[1], 0 : alpha.shape[2]]
    mass = alpha.sum(axis=(1, 2))
    return np.stack([(alpha * xs).sum(axis=(1, 2)) / mass, (alpha * ys).sum(axis=(1, 2)) / mass], 1)


# --- determinism ----------------------------------------------------------------------------


def test_same_seed_same_specs_and_frames_other_seed_differs():
    a, b, c = (make_video_specs(16, seed=s) for s in (5, 5, 6))
    assert a == b
    assert a != c
    assert np.array_equal(render_video(a[3]), render_video(b[3]))
    assert not np.array_equal(render_video(a[3]), render_video(c[3]))
    assert [make_caption(s, 5) for s in a] == [make_caption(s, 5) for s in b]


def test_worker_count_does_not_change_output(dataset, tmp_path):
    out, _ = dataset
    other = tmp_path / "two_workers"
    write_synthetic_dataset(other, seed=3, workers=2, **SMALL)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    for rel in files:
        if rel.name != "results.json":  # holds the directory, worker count and time taken
            assert (out / rel).read_bytes() == (other / rel).read_bytes(), rel


def test_different_seed_gives_different_captions(dataset, tmp_path):
    out, _ = dataset
    other = tmp_path / "seed4"
    write_synthetic_dataset(other, seed=4, workers=1, **SMALL)
    assert (out / "captions.jsonl").read_text() != (other / "captions.jsonl").read_text()


# --- layout and formats ---------------------------------------------------------------------


def test_layout_and_formats(dataset):
    out, summary = dataset
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["hflip"] is False and meta["recommended"]["hflip"] is False
    assert meta["classes"] == list(MOTIONS)
    assert meta["size"] == {"width": 64, "height": 48} and meta["num_frames"] == 20
    assert meta["fps"] == 30 and meta["seed"] == 3
    records = _records(out)
    assert len(records) == 16 == summary["num_videos"]
    assert {r["split"] for r in records} == {"train", "val"}
    for r in records:
        match = re.fullmatch(r"videos/(\w+)/(v_(\w+)_g(\d{2,})_c(\d{2,}))\.mp4", r["video"])
        assert match, r["video"]
        assert match[1] == match[3] == r["motion"] and match[2] == r["id"]
        assert (out / r["video"]).is_file()
    classes = [
        line.split() for line in (out / "ucfTrainTestlist/classInd.txt").read_text().splitlines()
    ]
    assert classes == [[str(i), m] for i, m in enumerate(MOTIONS, start=1)]
    train = [
        line.split() for line in (out / "ucfTrainTestlist/trainlist01.txt").read_text().splitlines()
    ]
    test = (out / "ucfTrainTestlist/testlist01.txt").read_text().splitlines()
    by_path = {r["video"].removeprefix("videos/"): r for r in records}
    assert {p for p, _ in train} == {p for p, r in by_path.items() if r["split"] == "train"}
    assert set(test) == {p for p, r in by_path.items() if r["split"] == "val"}
    for path, label in train:
        assert MOTIONS[int(label) - 1] == by_path[path]["motion"]
    results = json.loads((out / "results.json").read_text())
    assert results["splits"] == {"train": len(train), "val": len(test)}
    assert not list(out.rglob("*.partial"))


def test_project_readers_accept_the_output(dataset):
    from cpd.data import read_caption_jsonl, read_ucf101

    out, _ = dataset
    val = read_caption_jsonl(out / "captions.jsonl", out, split="val")
    assert len(val) == sum(r["split"] == "val" for r in _records(out))
    split = read_ucf101(out / "ucfTrainTestlist", out / "videos", split=1, subset="test")
    assert len(split.records) == len(val)


def test_every_video_decodes_to_declared_size(dataset):
    out, _ = dataset
    for r in _records(out):
        frames = _decode(out / r["video"])
        assert frames.shape == (20, 48, 64, 3), r["video"]


def test_decoded_video_matches_rendered_frames(dataset):
    out, _ = dataset
    spec = make_video_specs(seed=3, **{k: v for k, v in SMALL.items() if k != "progress"})[0]
    decoded = _decode(out / spec.path).astype(np.float32)
    rendered = render_video(spec).astype(np.float32)
    assert np.abs(decoded - rendered).mean() < 6  # lossy H.264, but the same picture


def test_refuses_non_empty_output_unless_forced(dataset, tmp_path):
    out = tmp_path / "used"
    out.mkdir()
    (out / "note.txt").write_text("mine")
    with pytest.raises(CPDError, match="not empty"):
        write_synthetic_dataset(out, **SMALL)
    write_synthetic_dataset(out, force=True, workers=1, **{**SMALL, "num_videos": 4})
    assert len(_records(out)) == 4 and (out / "note.txt").exists()


def test_interrupted_run_leaves_no_dataset_json(tmp_path, monkeypatch):
    import cpd.data.synthetic as synthetic

    calls = []

    def failing(path, frames, fps):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        Path(path).write_bytes(b"")

    monkeypatch.setattr(synthetic, "encode_mp4", failing)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_synthetic_dataset(tmp_path / "o", workers=1, **SMALL)
    assert not (tmp_path / "o" / "dataset.json").exists()


def test_bad_settings_raise_clear_errors(tmp_path):
    with pytest.raises(CPDError, match="width and height must be even"):
        write_synthetic_dataset(tmp_path / "o", width=63, progress=False)
    with pytest.raises(CPDError, match="num_videos"):
        make_video_specs(0)


def test_cli_writes_summary_and_refuses_reuse(tmp_path, capsys):
    from cpd.cli import main

    out = tmp_path / "cli"
    argv = ["synth", "-o", str(out), "--num-videos", "4", "--width", "48", "--height", "48",
            "--num-frames", "12", "--workers", "1", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "MovingLeft" in printed and "total" in printed
    assert json.loads((out / "results.json").read_text())["num_videos"] == 4
    assert main(argv) == 2
    assert "not empty" in capsys.readouterr().err


# --- the design: splits, groups, captions ---------------------------------------------------


def test_default_design_is_balanced_and_splits_by_group():
    specs = make_video_specs(480, seed=0)
    counts = {m: sum(s.motion == m for s in specs) for m in MOTIONS}
    assert set(counts.values()) == {60}
    groups: dict[int, list] = {}
    for s in specs:
        groups.setdefault(s.look.group, []).append(s)
    assert len(groups) == 120 and all(len(g) == 4 for g in groups.values())
    val = [g for g in groups.values() if g[0].split == "val"]
    assert all(len({s.split for s in g}) == 1 for g in groups.values())
    assert len(val) == 24
    assert {s.motion for g in val for s in g} == set(MOTIONS)
    train_looks = {
        (g[0].look.colour, g[0].look.shape) for g in groups.values() if g[0].split == "train"
    }
    assert all((g[0].look.colour, g[0].look.shape) in train_looks for g in val)
    for g in groups.values():  # whole time-reversal pairs: each clip's opposite is in the group
        motions = {s.motion for s in g}
        assert all(MOTIONS[MOTIONS.index(m) ^ 1] in motions for m in motions)


def test_group_shares_appearance_and_differs_in_motion():
    specs = make_video_specs(8, seed=1, width=64, height=64, num_frames=16)
    group = [s for s in specs if s.look.group == 0]
    assert len(group) == 4 and len({s.motion for s in group}) == 4
    rendered = [render_video(s, with_alpha=True) for s in group]
    first, alpha0 = rendered[0]
    for frames, alpha in rendered[1:]:
        clear = (alpha0[0] == 0) & (alpha[0] == 0)
        assert clear.mean() > 0.5
        assert np.array_equal(frames[0][clear], first[0][clear])  # the very same background
        glyph = (alpha[0] > 0.99) & (alpha0[0] > 0.99)  # where both glyphs are solid: same colour
        if glyph.sum() > 5:
            assert np.abs(frames[0][glyph].astype(int) - first[0][glyph]).mean() < 8


def test_captions_name_colour_shape_and_motion(dataset):
    out, _ = dataset
    for r in _records(out):
        text = r["caption"].lower()
        assert any(w in text for w in COLOUR_WORDS[r["colour"]]), text
        assert any(w in text for w in SHAPE_WORDS[r["shape"]]), text
        forms = {conjugate(p, f) for p in MOTION_WORDS[r["motion"]] for f in ("base", "3rd", "ing")}
        assert any(f in text for f in forms), text
    captions = [make_caption(s, 0) for s in make_video_specs(480, seed=0)]
    assert len(set(captions)) > 400  # paraphrases, not one sentence per class


def test_class_words():
    assert class_words("MovingLeft") == "moving left"
    assert class_words("RotatingCounterclockwise") == "rotating counterclockwise"
    assert class_words("Growing") == "growing"


# --- the motions are real -------------------------------------------------------------------


@pytest.mark.parametrize(
    "motion,axis,sign",
    [("MovingLeft", 0, -1), ("MovingRight", 0, 1), ("MovingUp", 1, -1), ("MovingDown", 1, 1)],
)
def test_translation_moves_the_glyph(motion, axis, sign):
    _, alpha = render_video(_spec(motion), with_alpha=True)
    c = _centroids(alpha)
    steps = np.diff(c[::4, axis])  # 8-frame clips at stride 4 see these steps
    assert (sign * steps > 0).all()
    assert sign * (c[-1, axis] - c[0, axis]) > 0.4 * alpha.shape[2 - axis]  # crosses the frame
    other = c[:, 1 - axis]
    assert np.ptp(other) < 4  # only jitter across the motion


def test_reversed_moving_left_looks_like_moving_right():
    _, left = render_video(_spec("MovingLeft"), with_alpha=True)
    _, right = render_video(_spec("MovingRight"), with_alpha=True)
    velocity_reversed_left = np.diff(_centroids(left[::-1])[:, 0]).mean()
    velocity_right = np.diff(_centroids(right)[:, 0]).mean()
    assert velocity_reversed_left > 0 and velocity_right > 0
    assert 0.5 < velocity_reversed_left / velocity_right < 2


@pytest.mark.parametrize("motion,sign", [("Growing", 1), ("Shrinking", -1)])
def test_size_changes(motion, sign):
    _, alpha = render_video(_spec(motion), with_alpha=True)
    area = alpha.sum(axis=(1, 2))[::4]
    assert (sign * np.diff(area) > 0).all()
    assert sign * math.log(area[-1] / area[0]) > math.log(1.5)


@pytest.mark.parametrize(
    "motion,sign", [("RotatingClockwise", 1), ("RotatingCounterclockwise", -1)]
)
def test_rotation_turns_the_glyph(motion, sign):
    spec = _spec(motion, shape="crescent")  # the crescent's mass sits off its centre
    _, alpha = render_video(spec, with_alpha=True)
    offset = _centroids(alpha) - np.array(spec.centre)
    angle = np.unwrap(np.arctan2(offset[:, 1], offset[:, 0]))  # y down: increasing = clockwise
    steps = np.degrees(np.diff(angle[::4]))
    assert (sign * steps > 3).all() and (sign * steps < 30).all()


def test_odd_group_size_and_no_val():
    specs = make_video_specs(9, seed=2, motions_per_group=3, val_fraction=0.0)
    assert [len([s for s in specs if s.look.group == g]) for g in range(3)] == [3, 3, 3]
    assert {s.split for s in specs} == {"train"}
    for g in range(3):  # three motions: one whole time-reversal pair and one more
        motions = {s.motion for s in specs if s.look.group == g}
        assert sum(MOTIONS[MOTIONS.index(m) ^ 1] in motions for m in motions) == 2
