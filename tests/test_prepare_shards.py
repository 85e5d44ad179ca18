"""``cpd prepare --shards`` / ``--part``: video2dataset's webdataset layout, parts, resume."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tarfile
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from cpd.commands import prepare as command
from cpd.data.prepare import WorkPart
from cpd.data.shard_writer import ShardPlan
from cpd.errors import DataError
from tests.videos import read_index, write_video

FAST = ["--seconds", "6", "--short-side", "48", "--preset", "ultrafast", "--quiet"]
SHARDS = ["--shards", "--shard-size", "3"]
TIMES = ("duration", "start_time", "end_time")  # the only stats that differ between runs

# (video, caption, split) rows of the manifest, in order: c has two captions, bad.mp4 is
# garbage and missing.mp4 is absent; 7 inputs -> shards [a bad b] [c missing d] [e]
ROWS = [("a.mp4", "a red ball", "train"), ("bad.mp4", "never decodes", None),
        ("b.mp4", "a blue cube", "validation"), ("c.mp4", "first of c", None),
        ("c.mp4", "second of c", None), ("missing.mp4", "never downloaded", None),
        ("d.mp4", "a green cone", None), ("e.mp4", "a long one", None)]  # fmt: skip
KEYS = {"00000": ["000000000", "000000002"], "00001": ["000010000", "000010002"],
        "00002": ["000020000"]}  # fmt: skip


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(list(argv)))


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five tiny videos (e: 8 s, cut to its middle 6 s), garbage bytes and a manifest."""
    folder = tmp_path_factory.mktemp("sources")
    for i, name in enumerate("abcd"):
        write_video(folder / f"{name}.mp4", num_frames=12 + 4 * i, fps=10, width=64, height=48)
    write_video(folder / "e.mp4", num_frames=80, fps=10, width=64, height=48)
    (folder / "bad.mp4").write_bytes(bytes(range(256)) * 10)
    lines = [{"video": v, "caption": c, **({"split": s} if s else {})} for v, c, s in ROWS]
    (folder / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def run_shards(sources: Path, out: Path, *extra: str) -> int:
    manifest = str(sources / "captions.jsonl")
    return cli("--manifest", manifest, "-o", str(out), *SHARDS, *FAST, *extra)


@pytest.fixture(scope="module")
def one(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A one-machine run with two worker processes."""
    out = tmp_path_factory.mktemp("one")
    return out, run_shards(sources, out, "--workers", "2")


def stats_of(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}_stats.json").read_text())


def test_layout_keys_and_tar_members(one: tuple[Path, int]) -> None:
    out, code = one
    assert code == 1  # two inputs failed
    shard_files = {f"{n}{s}" for n in KEYS for s in (".tar", ".parquet", "_stats.json")}
    assert {p.name for p in out.iterdir()} == shard_files | {"failures.jsonl", "results.json"}
    for name, keys in KEYS.items():
        with tarfile.open(out / f"{name}.tar") as tar:
            members = tar.getmembers()
            assert [m.name for m in members] == [
                f"{k}.{e}" for k in keys for e in ("json", "mp4", "txt")
            ]
            assert {(m.mtime, m.uid, m.gid, m.isfile()) for m in members} == {(0, 0, 0, True)}
            for key in keys:
                record = json.loads(tar.extractfile(f"{key}.json").read())
                assert tar.extractfile(f"{key}.txt").read().decode() == record["caption"]


def test_webdataset_reads_the_samples(one: tuple[Path, int]) -> None:
    out, _ = one
    urls = [str(out / f"{name}.tar") for name in KEYS]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [k for keys in KEYS.values() for k in keys]
    by_id = {}
    for sample in samples:
        record = json.loads(sample["json"])
        assert record["key"] == sample["__key__"] and record["status"] == "success"
        assert sample["txt"].decode() == record["caption"]
        assert record["error_message"] is None
        with av.open(io.BytesIO(sample["mp4"])) as container:
            stream = container.streams.video[0]
            frames = [read_index(f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
            assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 64, 48)
        assert len(frames) == record["frames"]
        assert (record["width"], record["height"], record["fps"]) == (64, 48, 10.0)
        by_id[record["id"]] = (record, frames)
    assert list(by_id) == ["a", "b", "c", "d", "e"]
    assert by_id["a"][0]["url"].endswith("a.mp4") and by_id["a"][0]["split"] == "train"
    assert by_id["b"][0]["split"] == "val"
    # several captions: the first is the sample's .txt, all of them are in the .json
    c = by_id["c"][0]
    assert (c["caption"], c["captions"], c["split"]) == ("first of c", ["first of c", "second of c"], "train")  # fmt: skip
    # e: 8 s at 10 fps, its middle 6 s are frames 10..69
    record, frames = by_id["e"]
    assert frames == list(range(10, 70))
    assert (record["duration"], record["source_duration"]) == (6.0, 8.0)


def test_parquet_stats_and_failures(one: tuple[Path, int]) -> None:
    out, _ = one
    rows = [r for name in KEYS for r in pq.read_table(out / f"{name}.parquet").to_pylist()]
    assert [r["key"] for r in rows] == [f"0000{s}000{p}" for s, p in
                                        [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]]  # fmt: skip
    assert [r["id"] for r in rows] == ["a", "bad", "b", "c", "missing", "d", "e"]
    bad, missing = rows[1], rows[4]
    assert bad["status"] == "failed_to_subsample" and bad["error_message"].startswith("cannot open")
    assert (missing["status"], missing["error_message"]) == ("failed_to_download", "no such file")
    assert (bad["caption"], bad["url"].endswith("bad.mp4"), bad["frames"]) == ("never decodes", True, None)  # fmt: skip
    assert all(r["status"] == "success" and r["error_message"] is None
               for r in rows if r["id"] not in ("bad", "missing"))  # fmt: skip
    # the .json of a sample is its parquet row
    with tarfile.open(out / "00002.tar") as tar:
        assert json.loads(tar.extractfile("000020000.json").read()) == rows[6]

    stats = stats_of(out, "00000")
    assert (stats["count"], stats["successes"], stats["failed_to_download"],
            stats["failed_to_subsample"]) == (3, 2, 0, 1)  # fmt: skip
    assert stats["status_dict"]["success"] == 2 and sum(stats["status_dict"].values()) == 3
    assert stats["end_time"] >= stats["start_time"] and stats["duration"] >= 0
    assert stats["bytes_downloaded"] > 0 and stats["shard_size"] == 3
    assert stats_of(out, "00001")["status_dict"] == {"success": 2, "no such file": 1}

    failures = [json.loads(line) for line in (out / "failures.jsonl").open()]
    assert [(f["id"], f["key"], f["status"]) for f in failures] == [
        ("bad", "000000001", "failed_to_subsample"),
        ("missing", "000010001", "failed_to_download"),
    ]
    results = json.loads((out / "results.json").read_text())
    assert (results["inputs"], results["done"], results["failed"], results["shards"],
            results["shards_written"]) == (7, 5, 2, 3, 3)  # fmt: skip


def test_parts_together_equal_one_machine(
    one: tuple[Path, int], sources: Path, tmp_path: Path
) -> None:
    whole, _ = one
    out = tmp_path / "parts"
    assert run_shards(sources, out, "--workers", "1", "--part", "1/2") == 1  # shard 1: missing
    assert run_shards(sources, out, "--workers", "1", "--part", "0/2") == 1  # shard 0: bad
    part0 = json.loads((out / "results.part-0-of-2.json").read_text())
    part1 = json.loads((out / "results.part-1-of-2.json").read_text())
    assert (part0["part_shards"], part0["inputs"], part1["part_shards"], part1["inputs"]) == (2, 4, 1, 3)  # fmt: skip
    for name in KEYS:
        # x264 in one thread is deterministic and tar members carry fixed times: equal bytes
        assert (out / f"{name}.tar").read_bytes() == (whole / f"{name}.tar").read_bytes()
        assert pq.read_table(out / f"{name}.parquet").equals(pq.read_table(whole / f"{name}.parquet"))  # fmt: skip
        a, b = stats_of(out, name), stats_of(whole, name)
        assert {k: v for k, v in a.items() if k not in TIMES} == {
            k: v for k, v in b.items() if k not in TIMES
        }
    failures = [json.loads(line)["id"] for p in ("0", "1")
                for line in (out / f"failures.part-{p}-of-2.jsonl").open()]  # fmt: skip
    assert failures == ["bad", "missing"]
    assert not (out / "results.json").exists() and not (out / "_tmp").exists()


def test_rerun_skips_complete_shards_and_redoes_interrupted_ones(
    one: tuple[Path, int], sources: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(one[0], out)
    before = {name: (out / f"{name}.tar").stat().st_mtime_ns for name in KEYS}
    original = {name: (out / f"{name}.tar").read_bytes() for name in KEYS}
    assert run_shards(sources, out, "--workers", "1") == 1  # the failures are still reported
    results = json.loads((out / "results.json").read_text())
    assert (results["shards_written"], results["shards_skipped"]) == (0, 3)
    assert (results["done"], results["skipped"], results["failed"]) == (0, 5, 2)
    assert {n: (out / f"{n}.tar").stat().st_mtime_ns for n in KEYS} == before
    assert len((out / "failures.jsonl").read_text().splitlines()) == 2  # read from the parquet

    # shard 1 stopped while writing its tar; shard 2 between renaming its tar and its stats
    (out / "00001.tar").rename(out / "00001.tar.partial")
    with open(out / "00001.tar.partial", "r+b") as f:
        f.truncate(5000)
    (out / "00001_stats.json").unlink()
    (out / "00002_stats.json").unlink()
    (out / "_tmp" / "00001").mkdir(parents=True)
    (out / "_tmp" / "00001" / "000010000.mp4").write_bytes(b"half")
    assert run_shards(sources, out, "--workers", "1") == 1
    results = json.loads((out / "results.json").read_text())
    assert (results["shards_written"], results["shards_skipped"]) == (2, 1)
    assert (results["done"], results["skipped"], results["failed"]) == (3, 2, 2)
    assert {n: (out / f"{n}.tar").read_bytes() for n in KEYS} == original
    assert (out / "00000.tar").stat().st_mtime_ns == before["00000"]
    assert not list(out.glob("*.partial")) and not (out / "_tmp").exists()


def test_other_settings_or_inputs_are_refused(
    one: tuple[Path, int], sources: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(one[0], out)
    assert run_shards(sources, out, "--crf", "30") == 2
    (out / "results.json").unlink()  # the shards' own stats still tell
    assert run_shards(sources, out, "--crf", "30") == 2
    manifest = sources / "captions.jsonl"
    # another shard size puts other inputs into shard 0
    argv = ["--manifest", str(manifest), "-o", str(out), "--shards", *FAST]
    assert cli(*argv, "--shard-size", "2") == 2
    assert (out / "00000.tar").read_bytes() == (one[0] / "00000.tar").read_bytes()


def test_one_split_into_its_own_shards(sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "val"
    assert run_shards(sources, out, "--workers", "1", "--split", "validation") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "00000.parquet", "00000.tar", "00000_stats.json", "failures.jsonl", "results.json"
    ]  # fmt: skip
    samples = list(wds.WebDataset([str(out / "00000.tar")], shardshuffle=False))
    assert [(s["__key__"], json.loads(s["json"])["id"], json.loads(s["json"])["split"])
            for s in samples] == [("000000000", "b", "val")]  # fmt: skip
    assert run_shards(sources, tmp_path / "none", "--split", "test") == 2


def test_webvid_csv_with_column_options(
    sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # WebVid's results.csv: videos at webvid/{page_dir}/{videoid}.mp4, captions in `name`
    monkeypatch.chdir(tmp_path)
    rows = [("1066", "a red ball", "000001_000050"), ("2077", "a blue, cube", "000051_000100"),
            ("3088", "never downloaded", "000051_000100")]  # fmt: skip
    for videoid, _, page_dir in rows[:2]:
        Path("webvid", page_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy(sources / "a.mp4", Path("webvid", page_dir, f"{videoid}.mp4"))
    lines = ["videoid,contentUrl,duration,page_dir,name"]
    lines += [f'{v},https://x/{v}.mp4,PT00H00M02S,{p},"{c}"' for v, c, p in rows]
    Path("results.csv").write_text("\n".join(lines) + "\n")
    argv = ["--manifest", "results.csv", "--video-root", "webvid/", "--video-key",
            "{page_dir}/{videoid}.mp4", "--caption-key", "name", "--id-key", "videoid",
            "-o", "OUT", "--shards"]  # fmt: skip
    assert cli(*argv, "--workers", "1", *FAST) == 1  # 3088 is missing
    samples = list(wds.WebDataset(["OUT/00000.tar"], shardshuffle=False))
    records = [json.loads(s["json"]) for s in samples]
    assert [(r["id"], s["txt"].decode()) for r, s in zip(records, samples, strict=True)] == [
        ("1066", "a red ball"),
        ("2077", "a blue, cube"),
    ]
    assert records[1]["url"] == str(Path("webvid/000051_000100/2077.mp4"))
    failures = [json.loads(x) for x in Path("OUT/failures.jsonl").read_text().splitlines()]
    assert [(f["id"], f["reason"]) for f in failures] == [("3088", "no such file")]


def test_bad_arguments_exit_2(sources: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    video = str(sources / "a.mp4")
    assert cli(video, "-o", out, "--shard-size", "3", *FAST) == 2  # without --shards
    assert cli(video, "-o", out, "--shards", "--shard-size", "0", *FAST) == 2
    for part in ("2/2", "1", "a/b", "-1/2", "0/0"):
        assert cli(video, "-o", out, "--shards", f"--part={part}", *FAST) == 2
    assert not Path(out).exists()


def test_loose_files_split_into_parts(sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    videos = [str(sources / f"{n}.mp4") for n in ("a", "b", "c", "bad")]
    argv = [*videos, "-o", str(out), "--caption-file", str(sources / "captions.jsonl")]
    assert cli(*argv, "--part", "0/2", "--workers", "1", *FAST) == 0  # a, c
    assert cli(*argv, "--part", "1/2", "--workers", "1", *FAST) == 1  # b, bad
    names = sorted(p.name for p in (out / "videos").iterdir())
    assert names == [f"trimmed_resize_{n}.mp4" for n in "abc"]
    assert [json.loads(x)["id"] for x in (out / "failures.part-1-of-2.jsonl").open()] == ["bad"]
    assert (out / "failures.part-0-of-2.jsonl").read_text() == ""
    pairs = [json.loads(x)["caption"] for x in (out / "captions.part-0-of-2.jsonl").open()]
    assert pairs == ["a red ball", "first of c", "second of c"]
    assert json.loads((out / "results.part-0-of-2.json").read_text())["done"] == 2
    assert not (out / "captions.jsonl").exists()
    # one plain run afterwards finds every video done and writes the whole captions.jsonl
    assert cli(*argv, "--workers", "1", *FAST) == 1
    results = json.loads((out / "results.json").read_text())
    assert (results["done"], results["skipped"], results["failed"]) == (0, 3, 1)
    assert len((out / "captions.jsonl").read_text().splitlines()) == 4


def test_shard_plan_keys_and_parts() -> None:
    plan = ShardPlan(num_jobs=7, shard_size=3)
    assert plan.num_shards == 3 and list(plan.jobs_of(2)) == [6]
    assert [plan.key(n) for n in (0, 2, 3, 6)] == ["000000000", "000000002", "000010000", "000020000"]  # fmt: skip
    assert plan.shards_of_part(0, 2) == [0, 2] and plan.shards_of_part(1, 2) == [1]
    assert plan.shards_of_part(3, 4) == []
    # positions take 4 digits up to 10000 per shard (0..9999), more beyond, as video2dataset
    assert ShardPlan(30000, 10000).key(10001) == "000010001"
    assert ShardPlan(30000, 10001).key(10002) == "0000100001"
    assert ShardPlan(10**6, 1).name(123456) == "123456"  # more than 100000 shards
    assert (WorkPart.parse("1/4").index, WorkPart.parse("1/4").count) == (1, 4)
    assert WorkPart(1, 4).file_name("failures", ".jsonl") == "failures.part-1-of-4.jsonl"
    assert WorkPart().file_name("results", ".json") == "results.json"
    with pytest.raises(DataError):
        WorkPart.parse("4/4")
    with pytest.raises(DataError):
        ShardPlan(3, 0)
