"""``cpd prepare``: middle segment, short side, resumable runs, failure list, caption manifest."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import pytest

from cpd.commands import prepare as command
from cpd.data import read_caption_manifest, read_instagram_json
from cpd.data.prepare import PrepareJob, _in_pool
from cpd.video.transcode import middle_window, output_size
from tests.videos import read_index, write_video

FAST = ["--seconds", "6", "--short-side", "48", "--preset", "ultrafast", "--quiet"]


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(list(argv)))


def decoded(path: Path) -> tuple[list[int], list[float], list[bool], av.VideoStream]:
    """Frame indices (read from the pixels), times and keyframe flags of a prepared video."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return (
            [read_index(f.to_ndarray(format="rgb24")) for f in frames],
            [float(f.time) for f in frames],
            [f.key_frame for f in frames],
            stream,
        )


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30 s and a 5 s video (10 fps, 160x96), garbage bytes, and a file with no video."""
    folder = tmp_path_factory.mktemp("sources")
    write_video(folder / "long.mp4", num_frames=300, fps=10, width=160, height=96, gop=32)
    write_video(folder / "short.mp4", num_frames=50, fps=10, width=160, height=96)
    (folder / "garbage.mp4").write_bytes(bytes(range(256)) * 40)
    with av.open(str(folder / "silence.mp4"), "w") as container:
        audio = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame(format="fltp", layout="mono", samples=1024)
        frame.sample_rate = 8000
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        for packet in [*audio.encode(frame), *audio.encode()]:
            container.mux(packet)
    return folder


@pytest.fixture(scope="module")
def prepared(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("out")
    captions = sources / "captions.jsonl"
    lines = [{"video": "x/long.avi", "caption": "a long one", "split": "validation"},
             {"video": "y.mp4", "id": "short", "caption": "a short one"}]  # fmt: skip
    captions.write_text("".join(json.dumps(x) + "\n" for x in lines))
    code = cli(str(sources), str(sources / "absent.mp4"), "-o", str(out), "--caption-file",
               str(captions), "--workers", "1", *FAST)  # fmt: skip
    return out, code


def test_middle_segment_short_side_and_keyframes(prepared: tuple[Path, int]) -> None:
    out, _ = prepared
    index, times, keys, stream = decoded(out / "videos" / "trimmed_resize_long.mp4")
    # 30 s at 10 fps, middle 6 s: frames 120..179, timestamps from 0
    assert index == list(range(120, 180))
    assert times[0] == 0.0 and times[-1] == pytest.approx(5.9)
    assert (stream.width, stream.height) == (80, 48)
    assert stream.average_rate == 10
    key_at = [i for i, k in enumerate(keys) if k] + [len(keys)]
    gaps = [b - a for a, b in zip(key_at, key_at[1:], strict=False)]
    assert key_at[0] == 0 and max(gaps) <= 10  # a keyframe at least every second
    # a video shorter than the segment is kept whole
    index, _, _, stream = decoded(out / "videos" / "trimmed_resize_short.mp4")
    assert index == list(range(50))
    assert stream.pix_fmt == "yuv420p"


def test_failures_are_listed_and_captions_readable(prepared: tuple[Path, int]) -> None:
    out, code = prepared
    assert code == 1
    failures = {f["id"]: f for f in map(json.loads, (out / "failures.jsonl").open())}
    assert set(failures) == {"garbage", "silence", "absent"}
    assert failures["absent"]["reason"] == "no such file"
    assert failures["silence"]["reason"] == "no video stream"
    assert failures["garbage"]["reason"].startswith("cannot open")
    assert {f["kind"] for f in failures.values()} == {"input"}
    results = json.loads((out / "results.json").read_text())
    assert (results["inputs"], results["done"], results["skipped"], results["failed"]) == (
        5,
        2,
        0,
        3,
    )
    records = read_caption_manifest(out / "captions.jsonl", out)
    assert {(r.video_id, r.split) for r in records} == {("long", "val"), ("short", "train")}
    assert all(Path(r.path).is_file() for r in records)


def test_rerun_skips_done_and_redoes_interrupted(
    prepared: tuple[Path, int], tmp_path: Path, sources: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(prepared[0], out)
    videos = out / "videos"
    original = (videos / "trimmed_resize_short.mp4").read_bytes()
    # an interrupted run leaves a truncated temp file and no output; a cut output is not done
    (videos / "trimmed_resize_short.mp4").rename(videos / "trimmed_resize_short.mp4.partial")
    with open(videos / "trimmed_resize_short.mp4.partial", "r+b") as f:
        f.truncate(len(original) // 2)
    assert cli(str(sources / "short.mp4"), str(sources / "long.mp4"), "-o", str(out), *FAST) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["done"], results["skipped"], results["failed"]) == (1, 1, 0)
    assert (videos / "trimmed_resize_short.mp4").read_bytes() == original
    assert not list(videos.glob("*.partial"))
    long = videos / "trimmed_resize_long.mp4"
    long.write_bytes(long.read_bytes()[:3000])
    assert cli(str(sources / "long.mp4"), "-o", str(out), *FAST) == 0
    assert json.loads((out / "results.json").read_text())["done"] == 1
    assert decoded(long)[0] == list(range(120, 180))
    # other settings in the same OUT are refused (exit 2) rather than mixed
    assert cli(str(sources / "long.mp4"), "-o", str(out), *FAST, "--crf", "30") == 2


def test_instagram_json_and_worker_count(sources: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("long", "short"):
        shutil.copy(sources / f"{name}.mp4", raw / f"ig{name}.mp4")
    listing = {"iglong": {"subset": "training", "caption": "long #fun"},
               "igshort": {"subset": "validation", "caption": "short"},
               "iggone": {"subset": "training", "caption": "never downloaded"}}  # fmt: skip
    manifest = tmp_path / "ig.json"
    manifest.write_text(json.dumps(listing))
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}"
        argv = ["--manifest", str(manifest), "--video-root", str(raw), "-o", str(out)]
        assert cli(*argv, "--workers", workers, *FAST) == 1
        outs.append(out)
    failures = [json.loads(line) for line in (outs[0] / "failures.jsonl").open()]
    assert [(f["id"], f["reason"]) for f in failures] == [("iggone", "no such file")]
    # the official layout: the original JSON finds the prepared files in OUT/videos
    records = read_instagram_json(manifest, outs[0] / "videos", split="train")
    assert [r.video_id for r in records] == ["iglong", "iggone"]
    assert Path(records[0].path).is_file()
    pairs = read_caption_manifest(outs[0] / "captions.jsonl", outs[0])
    assert {(r.video_id, r.caption, r.split) for r in pairs} == {
        ("iglong", "long #fun", "train"),
        ("igshort", "short", "val"),
    }
    for name in ("trimmed_resize_iglong.mp4", "trimmed_resize_igshort.mp4"):
        assert (outs[0] / "videos" / name).read_bytes() == (outs[1] / "videos" / name).read_bytes()
    assert (outs[0] / "captions.jsonl").read_text() == (outs[1] / "captions.jsonl").read_text()


def test_json_lines_named_json_is_not_instagram(tmp_path: Path) -> None:
    # the format comes from the content, as pretraining reads it: a .json of JSON Lines
    for name in ("a", "b"):
        write_video(tmp_path / f"{name}.mp4", num_frames=12, fps=10, width=64, height=48)
    rows = [{"video": "a.mp4", "caption": "an a", "split": "val"},
            {"video": "b.mp4", "caption": "a b"}]  # fmt: skip
    manifest = tmp_path / "pairs.json"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert cli("--manifest", str(manifest), "-o", str(out), "--workers", "1", *FAST) == 0
    pairs = read_caption_manifest(out / "captions.jsonl", out)
    assert [(r.video_id, r.caption, r.split) for r in pairs] == [
        ("a", "an a", "val"),
        ("b", "a b", "train"),
    ]
    assert all(Path(r.path).is_file() for r in pairs)
    # a format that the content contradicts is refused (exit 2), not read as something else
    assert cli("--manifest", str(manifest), "--format", "instagram", "-o", str(out), *FAST) == 2


def test_bad_rows_skip_writes_them_per_part(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_video(tmp_path / f"{name}.mp4", num_frames=12, fps=10, width=64, height=48)
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("file,text\na.mp4,an a\nc.mp4,\nb.mp4,a b\n")  # line 3: no caption
    out = tmp_path / "out"
    argv = ["--manifest", str(manifest), "-o", str(out), "--video-key", "file",
            "--caption-key", "text", "--workers", "1", *FAST]  # fmt: skip
    assert cli(*argv) == 2  # bad rows are an error by default
    assert not out.exists()
    assert cli(*argv, "--bad-rows", "skip") == 0
    bad = [json.loads(line) for line in (out / "bad_rows.jsonl").open()]
    assert [(b["line"], b["problem"], b["row"]) for b in bad] == [(3, "empty 'text'", "c.mp4,")]
    pairs = [json.loads(line) for line in (out / "captions.jsonl").open()]
    assert [p["caption"] for p in pairs] == ["an a", "a b"]
    # parts sharing OUT write their own file
    assert cli(*argv, "--bad-rows", "skip", "--part", "1/2") == 0
    assert (out / "bad_rows.part-1-of-2.jsonl").read_text() == (out / "bad_rows.jsonl").read_text()


def test_odd_rates_and_variable_frame_rate(tmp_path: Path) -> None:
    ntsc = write_video(tmp_path / "ntsc.mp4", num_frames=60, fps=Fraction(30000, 1001), width=64)
    pts = [0, 100, 150, 300, 320, 500, 600, 610, 700, 900]
    vfr = write_video(tmp_path / "vfr.mkv", num_frames=10, pts=pts, time_base=Fraction(1, 1000))
    out = tmp_path / "out"
    assert cli(str(ntsc), str(vfr), "-o", str(out), *FAST) == 0
    index, times, _, stream = decoded(out / "videos" / "trimmed_resize_ntsc.mp4")
    assert stream.average_rate == Fraction(30000, 1001) and index == list(range(60))
    index, times, _, _ = decoded(out / "videos" / "trimmed_resize_vfr.mp4")
    assert index == list(range(10))
    assert times == pytest.approx([p / 1000 for p in pts], abs=1e-3)


def test_sizes_and_windows() -> None:
    assert output_size(1920, 1080, 256) == (456, 256)
    assert output_size(1080, 1920, 256) == (256, 456)
    assert output_size(160, 120, 256) == (342, 256)  # upscaled, as the paper did
    assert output_size(161, 121, 256, upscale=False) == (160, 120)  # kept, made even
    assert output_size(1000, 1000, 256, upscale=False) == (256, 256)
    # 30 s at 25 fps in a 1/12800 time base: the middle 20 s is frames 125..624
    pts = [512 * i for i in range(750)]
    start, end = middle_window(pts, Fraction(1, 12800), 20)
    kept = [i for i, p in enumerate(pts) if start <= p < end]
    assert (kept[0], kept[-1]) == (125, 624)
    assert middle_window(pts, Fraction(1, 12800), 30) is None


def test_bad_arguments_exit_2(sources: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    assert cli("-o", out, "--quiet") == 2  # no input at all
    assert cli(str(sources), "--manifest", "x.json", "-o", out) == 2
    assert cli(str(sources), "-o", out, "--short-side", "47") == 2
    assert cli(str(tmp_path / "*.nothing"), "-o", out) == 2
    assert cli(str(sources), "-o", out, "--caption-key", "text") == 2  # no manifest to read
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"video": "a.mp4"}\n')
    assert cli("--manifest", str(broken), "-o", out) == 2


def _crash_on_two(task: tuple) -> dict:
    """Stands in for a worker that FFmpeg kills (runs in a spawned process)."""
    if task[0] == 2:
        os._exit(139)
    return {"number": task[0], "status": "done"}


def test_a_crashing_worker_fails_only_its_input() -> None:
    tasks = [(n, PrepareJob(f"v{n}", f"v{n}.mp4")) for n in range(6)]
    outcomes = sorted(_in_pool(tasks, 2, _crash_on_two), key=lambda r: r["number"])
    assert [r["number"] for r in outcomes] == list(range(6))
    assert [r["status"] for r in outcomes] == ["done"] * 2 + ["failed"] + ["done"] * 3
    assert outcomes[2]["reason"] == "worker process crashed" and outcomes[2]["path"] == "v2.mp4"
