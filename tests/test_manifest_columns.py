"""Real corpora as they come: any manifest's columns (WebVid's CSV, video2dataset's parquet),
formats detected from content and suffix, and the opt-in that skips bad rows."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cpd.config import ConfigError
from cpd.data.manifests import (
    ManifestReport,
    detect_format,
    read_caption_manifest,
    read_instagram_json,
)
from cpd.errors import DataError
from cpd.train.config import load_pretrain_config

# The head of WebVid-10M's results_10M_train.csv, as published (no file path column).
WEBVID = (
    "videoid,name,page_idx,page_dir,duration,contentUrl\n"
    "31353427,Merida mexico 09 29 2017 -  mexican flag waving in the wind,1,"
    "001151_001200,PT00H00M11S,https://ak.picdn.net/shutterstock/videos/31353427/preview/"
    "stock-footage.mp4\n"
    '14781349,"Bride, groom and wedding car",1,001151_001200,PT00H00M10S,'
    "https://ak.picdn.net/shutterstock/videos/14781349/preview/stock-footage.mp4\n"
    "18871646,Young woman in a field of flowers,2,001201_001250,PT00H00M18S,"
    "https://ak.picdn.net/shutterstock/videos/18871646/preview/stock-footage.mp4\n"
)
WEBVID_KEYS = {"video_key": "{videoid}.mp4", "caption_key": "name", "id_key": "videoid"}


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def write_v2d_shard(path: Path) -> Path:
    """A video2dataset shard table: every url tried, ``status`` saying which were written, and
    (as its parquet output keeps them) the video bytes in a binary column."""
    table = pa.table({
        "key": ["000000000", "000000001", "000000002", "000000003"],
        "caption": ["a dog on a skateboard", "never downloaded", "rain on a window", "x"],
        "url": [f"https://example.com/{i}.mp4" for i in range(4)],
        "status": ["success", "failed_to_download", "success", "failed_to_subsample"],
        "error_message": [None, "HTTP Error 404", None, "no video stream"],
        "width": [320, None, 320, None],
        "height": [240, None, 240, None],
        "mp4": [b"\x00\x00\x00\x18ftypmp42", None, b"\x00\x00\x00\x18ftypmp42", None],
    })  # fmt: skip
    pq.write_table(table, path)
    return path


# ---------------------------------------------------------------- WebVid CSV


def test_webvid_csv_reads_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "results_10M_train.csv"
    path.write_text(WEBVID, encoding="utf-8")
    records = read_caption_manifest(path, tmp_path / "videos", **WEBVID_KEYS)
    assert [r.video_id for r in records] == ["31353427", "14781349", "18871646"]
    assert [r.index for r in records] == [0, 1, 2]
    assert records[1].caption == "Bride, groom and wedding car"
    assert records[0].path == str(tmp_path / "videos" / "31353427.mp4")
    assert records[0].split is None
    assert dict(records[2].meta) == {
        "page_idx": "2",
        "page_dir": "001201_001250",
        "duration": "PT00H00M18S",
        "contentUrl": "https://ak.picdn.net/shutterstock/videos/18871646/preview/stock-footage.mp4",
    }
    # webvid's own download layout: one folder per page
    nested = read_caption_manifest(path, tmp_path, **{**WEBVID_KEYS,
                                   "video_key": "{page_dir}/{videoid}.mp4"})  # fmt: skip
    assert nested[2].path == str(tmp_path / "001201_001250" / "18871646.mp4")


def test_webvid_keys_as_config_overrides(tmp_path: Path) -> None:
    """``data.video_key={videoid}.mp4`` is not YAML: the override takes it as text."""
    cfg = load_pretrain_config(
        "pretrain_instagram_r50",
        ["data.video_key={videoid}.mp4", "data.caption_key=name", "data.id_key=videoid"],
    )
    assert cfg.data.manifest_options() == {**WEBVID_KEYS, "bad_rows": "error"}
    cfg2 = load_pretrain_config(None, ["data.video_key={page_dir}/{videoid}.mp4",
                                       "data.id_key='quoted'", "data.bad_rows=skip"])  # fmt: skip
    assert cfg2.data.video_key == "{page_dir}/{videoid}.mp4" and cfg2.data.id_key == "quoted"
    assert cfg2.data.bad_rows == "skip"
    with pytest.raises(ConfigError, match="data.bad_rows"):
        load_pretrain_config(None, ["data.bad_rows=ignore"])
    with pytest.raises(ConfigError, match="data.manifest_format"):
        load_pretrain_config(None, ["data.manifest_format=xml"])
    path = tmp_path / "webvid.csv"
    path.write_text(WEBVID, encoding="utf-8")
    records = read_caption_manifest(path, tmp_path, None, cfg.data.manifest_format,
                                    **cfg.data.manifest_options())  # fmt: skip
    assert [Path(r.path).name for r in records] == ["31353427.mp4", "14781349.mp4", "18871646.mp4"]


def test_missing_column_is_one_error_listing_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "webvid.csv"
    path.write_text(WEBVID, encoding="utf-8")
    msg = error_of(read_caption_manifest, path, tmp_path)
    assert msg == (
        f"{path}: 1 problem:\n  line 1: header lacks column(s) 'video' (video_key), 'caption' "
        "(caption_key); columns present: videoid, name, page_idx, page_dir, duration, contentUrl"
    )
    msg = error_of(read_caption_manifest, path, tmp_path, video_key="{page}/{videoid}.mp4",
                   caption_key="name", id_key="video_id")  # fmt: skip
    assert "1 problem" in msg
    assert "'page' (video_key '{page}/{videoid}.mp4')" in msg and "'video_id' (id_key)" in msg
    # JSON Lines: a column that no row has is one error too (not one per row)
    lines = tmp_path / "m.jsonl"
    lines.write_text(
        "".join(json.dumps({"clip": f"{i}.mp4", "text": "t"}) + "\n" for i in range(30))
    )
    msg = error_of(read_caption_manifest, lines, tmp_path, caption_key="text")
    assert msg == (
        f"{lines}: 1 problem:\n  rows: no row has column(s) 'video' (video_key); "
        "columns present: clip, text"
    )


def test_templates(tmp_path: Path) -> None:
    rows = [{"idx": 7, "shard": "a", "caption": "x"}, {"idx": 8, "shard": " ", "caption": "y"},
            {"idx": True, "shard": "b", "caption": "z"}]  # fmt: skip
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    msg = error_of(read_caption_manifest, path, tmp_path, video_key="{shard}/{idx:05d}.mp4")
    assert "line 2: empty 'shard' (video_key '{shard}/{idx:05d}.mp4')" in msg
    assert "line 3: field 'idx' (video_key '{shard}/{idx:05d}.mp4') must be a string or " in msg
    (first,) = read_caption_manifest(path, tmp_path, video_key="{shard}/{idx:05d}.mp4",
                                     bad_rows="skip")  # fmt: skip
    assert first.path == str(tmp_path / "a" / "00007.mp4") and first.video_id == "a/00007"
    assert dict(first.meta) == {"idx": 7, "shard": "a"}  # template columns stay in meta
    for bad in ("{idx.mp4", "{}.mp4", "{ }.mp4"):
        with pytest.raises(ConfigError, match="video_key"):
            read_caption_manifest(path, tmp_path, video_key=bad)
    with pytest.raises(ConfigError, match="caption_key"):
        read_caption_manifest(path, tmp_path, caption_key="")


# ---------------------------------------------------------------- video2dataset parquet


def test_video2dataset_parquet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shard = write_v2d_shard(tmp_path / "00000.parquet")
    report = ManifestReport()
    with caplog.at_level(logging.INFO, logger="cpd.data"):
        records = read_caption_manifest(shard, tmp_path / "00000", video_key="{key}.mp4",
                                        report=report)  # fmt: skip
    assert [(r.index, r.video_id, r.caption) for r in records] == [
        (0, "000000000", "a dog on a skateboard"),
        (1, "000000002", "rain on a window"),
    ]
    assert records[1].path == str(tmp_path / "00000" / "000000002.mp4")
    assert dict(records[0].meta) == {"key": "000000000", "url": "https://example.com/0.mp4",
                                     "status": "success", "error_message": None, "width": 320,
                                     "height": 240}  # the video bytes are not read  # fmt: skip
    assert (report.format, report.rows, report.kept) == ("parquet", 4, 2)
    assert report.not_written == {"failed_to_download": 1, "failed_to_subsample": 1}
    assert report.num_not_written == 2 and report.num_bad_rows == 0
    assert "left out 2 row(s) whose 'status' is not 'success'" in caplog.text
    assert detect_format(shard) == "parquet"
    explicit = read_caption_manifest(shard, tmp_path / "00000", format="parquet",
                                     video_key="{key}.mp4")  # fmt: skip
    assert explicit == records
    # the default keys name the missing column and list the table's
    msg = error_of(read_caption_manifest, shard, tmp_path)
    assert "schema: the table lacks column(s) 'video' (video_key); columns present: key, " in msg
    # a copy under another name is still recognised by its content
    copy = tmp_path / "shard.bin"
    copy.write_bytes(shard.read_bytes())
    assert read_caption_manifest(copy, tmp_path / "00000", video_key="{key}.mp4") == records


def test_parquet_bad_rows_and_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"video": ["a.mp4", "../b.mp4", None], "caption": ["x", "y", "z"]}),
                   path)  # fmt: skip
    msg = error_of(read_caption_manifest, path, tmp_path)
    assert "row 2: video path '../b.mp4' escapes the data root" in msg
    assert "row 3: missing field 'video'" in msg
    report = ManifestReport()
    (kept,) = read_caption_manifest(path, tmp_path, bad_rows="skip", report=report)
    assert kept.index == 0 and kept.caption == "x"
    assert [(b.where, b.line, b.row) for b in report.bad_rows] == [
        ("row 2", None, {"video": "../b.mp4", "caption": "y"}),
        ("row 3", None, {"video": None, "caption": "z"}),
    ]
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"not a parquet file at all")
    assert "cannot read as Parquet" in error_of(read_caption_manifest, garbage, tmp_path)


# ---------------------------------------------------------------- formats


def test_formats_follow_content_and_suffix(tmp_path: Path) -> None:
    rows = [{"video": "a.mp4", "caption": "one", "split": "train"},
            {"video": "b.mp4", "caption": "two", "split": "val"}]  # fmt: skip
    ig = {"a": {"subset": "training", "caption": "one"}, "b": {"subset": "validation",
                                                               "caption": "two"}}  # fmt: skip
    files = {
        "lines.json": "".join(json.dumps(r) + "\n" for r in rows),  # JSON Lines named .json
        "list.json": json.dumps(rows, indent=2),
        "ig.json": json.dumps(ig),
        "ig_pretty.json": json.dumps(ig, indent=2),
        "ig_named.jsonl": json.dumps(ig, indent=1),
        "one_row.json": json.dumps(rows[0]),
        "lines.txt": "".join(json.dumps(r) + "\n" for r in rows),  # no telling suffix
        "m.tsv": "video\tcaption\tsplit\na.mp4\tone, with a comma\ttrain\nb.mp4\ttwo\tval\n",
    }
    expected = {"lines.json": "jsonl", "list.json": "json", "ig.json": "instagram",
                "ig_pretty.json": "instagram", "ig_named.jsonl": "instagram",
                "one_row.json": "jsonl", "lines.txt": "jsonl", "m.tsv": "tsv"}  # fmt: skip
    for name, text in files.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        assert detect_format(path) == expected[name], name
        records = read_caption_manifest(path, tmp_path, "train")
        assert records[0].split == "train" and records[0].index == 0, name
        assert records[0].caption.startswith("one"), name
    (tsv,) = read_caption_manifest(tmp_path / "m.tsv", tmp_path, "train", "tsv")
    assert tsv.caption == "one, with a comma"
    plain = tmp_path / "notes.txt"
    plain.write_text("video,caption\na.mp4,x\n")
    assert "unknown manifest format '.txt'" in error_of(read_caption_manifest, plain, tmp_path)
    assert read_caption_manifest(plain, tmp_path, format="csv")[0].caption == "x"
    with pytest.raises(ConfigError, match="unknown manifest format 'xml'"):
        read_caption_manifest(plain, tmp_path, format="xml")


def test_a_format_the_content_contradicts_is_an_error(tmp_path: Path) -> None:
    lines = tmp_path / "captions.jsonl"
    lines.write_text('{"video": "a.mp4", "caption": "x"}\n{"video": "b.mp4", "caption": "y"}\n')
    ig = tmp_path / "ig.json"
    ig.write_text(json.dumps({"1": {"subset": "training", "caption": "x"}}, indent=2))
    table = write_v2d_shard(tmp_path / "00000.parquet")
    cases = [
        (lines, "instagram", "JSON Lines (one object per line)"),
        (lines, "csv", "JSON Lines (one object per line)"),
        (lines, "json", "JSON Lines (one object per line)"),
        (lines, "parquet", "JSON Lines (one object per line)"),
        (ig, "jsonl", "one JSON object of objects (the Instagram caption JSON)"),
        (table, "jsonl", "a Parquet table"),
        (table, "csv", "a Parquet table"),
    ]
    for path, given, holds in cases:
        msg = error_of(read_caption_manifest, path, tmp_path, format=given)
        assert msg.startswith(f"{path}: format {given!r} was given, but the file holds {holds}; ")
        assert "format to null" in msg, msg
    # the format that matches, given or detected, reads
    assert len(read_caption_manifest(lines, tmp_path, format="jsonl")) == 2
    assert len(read_caption_manifest(lines, tmp_path, format="auto")) == 2
    assert len(read_caption_manifest(ig, tmp_path, format=None)) == 1


def test_instagram_json_keys(tmp_path: Path) -> None:
    path = tmp_path / "ig.json"
    path.write_text(json.dumps({"1": {"subset": "training", "text": "x"}}))
    assert read_caption_manifest(path, tmp_path, caption_key="text")[0].caption == "x"
    with pytest.raises(ConfigError, match="video_key/id_key do not apply"):
        read_caption_manifest(path, tmp_path, video_key="{id}.mp4")


# ---------------------------------------------------------------- bad rows


BAD_JSONL = [
    '{"video": "ok/1.mp4", "caption": "fine", "split": "train"}',  # 1
    '{"video": "ok/2.mp4", "caption": "", "split": "train"}',  # 2 empty caption
    '{"video": "ok/3.mp4", "caption": "also fine", "split": "val"}',  # 3
    "{not json",  # 4
    '{"video": "/etc/passwd", "caption": "absolute", "split": "train"}',  # 5
    '{"video": "ok/1.mp4", "caption": "fine", "split": "train"}',  # 6 duplicate of line 1
    '{"video": "ok/4.mp4", "caption": "good", "split": "train", "status": "failed_to_download"}',
    '{"video": "ok/5.mp4", "caption": "last one", "split": "train"}',  # 8
    '{"caption": 5}',  # 9 two problems
]


def test_bad_rows_error_is_the_default(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(BAD_JSONL) + "\n")
    msg = error_of(read_caption_manifest, path, tmp_path)
    assert "m.jsonl: 6 problems" in msg
    for part in ("line 2: empty 'caption'", "line 4: invalid JSON",
                 "line 5: video path '/etc/passwd' is absolute",
                 "line 6: duplicate pair ('ok/1.mp4', 'fine'), first at line 1",
                 "line 9: missing field 'video'",
                 "line 9: field 'caption' must be a string"):  # fmt: skip
        assert part in msg, part
    assert "line 7" not in msg  # not written by video2dataset: left out, not an error


def test_bad_rows_skip_counts_and_writes_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(
        ("\n".join(BAD_JSONL) + "\n").encode() + b'{"video": "x.mp4", "caption": "\xff"}\n'
    )
    report = ManifestReport()
    out = tmp_path / "run" / "bad_rows.jsonl"
    with caplog.at_level(logging.INFO, logger="cpd.data"):
        train = read_caption_manifest(path, tmp_path, "train", bad_rows="skip",
                                      bad_rows_file=out, report=report)  # fmt: skip
    assert [(r.index, r.caption) for r in train] == [(0, "fine"), (1, "last one")]
    assert (report.rows, report.kept, report.num_bad_rows, report.num_not_written) == (10, 2, 6, 1)
    assert "skipped 6 bad row(s) of 10 (bad_rows=skip)" in caplog.text
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(w["line"], w["where"]) for w in written] == [
        (2, "line 2"), (4, "line 4"), (5, "line 5"), (6, "line 6"), (9, "line 9"), (10, "line 10"),
    ]  # fmt: skip
    assert all(w["file"] == str(path) for w in written)
    assert written[0] == {"file": str(path), "line": 2, "where": "line 2",
                          "problem": "empty 'caption'", "row": BAD_JSONL[1]}  # fmt: skip
    assert written[1]["row"] == "{not json" and written[1]["problem"].startswith("invalid JSON")
    assert (
        written[4]["problem"] == "missing field 'video'; field 'caption' must be a string, got int"
    )
    assert written[5]["problem"].startswith("not UTF-8 text") and "\ufffd" in written[5]["row"]
    # the validation split reads the same way; indices count only the kept rows of each split
    val = read_caption_manifest(path, tmp_path, "val", bad_rows="skip")
    assert [(r.index, r.caption) for r in val] == [(0, "also fine")]


def test_bad_rows_skip_csv_and_instagram(tmp_path: Path) -> None:
    csv_path = tmp_path / "m.csv"
    csv_path.write_text('video,caption\na.mp4,"two\nlines"\nb.mp4\n,no video\nc.mp4,ok\n')
    report = ManifestReport()
    records = read_caption_manifest(csv_path, tmp_path, bad_rows="skip", report=report)
    assert [(r.index, r.caption) for r in records] == [(0, "two\nlines"), (1, "ok")]
    assert [(b.line, b.problem, b.row) for b in report.bad_rows] == [
        (4, "1 fields, the header has 2", "b.mp4"),
        (5, "empty 'video'", ",no video"),
    ]
    ig_path = tmp_path / "ig.json"
    ig_path.write_text(json.dumps({"1": {"subset": "training", "caption": "x"}, "2": "oops",
                                   "a/b": {"subset": "training", "caption": "y"}}))  # fmt: skip
    (kept,) = read_instagram_json(ig_path, tmp_path, bad_rows="skip", report=report)
    assert kept.video_id == "1" and report.format == "instagram"
    assert [(b.where, b.line, b.row) for b in report.bad_rows] == [
        ("key '2'", None, {"2": "oops"}),
        ("key 'a/b'", None, {"a/b": {"subset": "training", "caption": "y"}}),
    ]
    # problems of the whole file are errors even when skipping
    assert "header lacks" in error_of(read_caption_manifest, csv_path, tmp_path,
                                      caption_key="text", bad_rows="skip")  # fmt: skip
    with pytest.raises(ConfigError, match="bad_rows"):
        read_caption_manifest(csv_path, tmp_path, bad_rows="ignore")


# ---------------------------------------------------------------- through the commands


def test_pretrain_skips_bad_rows_into_the_run_directory(
    tiny_pretrain_overrides: list[str], tiny_synthetic: Path, tmp_path: Path
) -> None:
    from cpd.train.pretrain import pretrain

    lines = (tiny_synthetic / "captions.jsonl").read_text().splitlines()
    manifest = tmp_path / "captions.jsonl"
    bad = ['{"video": "videos/none.mp4", "caption": ""}', "garbage"]
    manifest.write_text("\n".join([lines[0], bad[0], *lines[1:], bad[1]]) + "\n")
    run_dir = tmp_path / "run"
    overrides = [*tiny_pretrain_overrides, f"data.manifest={manifest}", f"data.video_root={tiny_synthetic}",
                 "schedule.epochs=1", "run.val_every=1", f"run.out={run_dir}"]  # fmt: skip
    with pytest.raises(DataError, match="2 problems"):
        pretrain(load_pretrain_config("pretrain_synthetic_cpu", overrides))
    results = pretrain(load_pretrain_config("pretrain_synthetic_cpu", [*overrides,
                                                                      "data.bad_rows=skip"]))  # fmt: skip
    assert results["global_step"] == 3  # the 12 good training pairs, batch 4
    written = [json.loads(x) for x in (run_dir / "bad_rows.jsonl").read_text().splitlines()]
    assert [(w["line"], w["problem"], w["row"]) for w in written] == [
        (2, "empty 'caption'", bad[0]),
        (len(lines) + 2, "invalid JSON: Expecting value (column 1)", "garbage"),
    ]


def test_pretrain_on_a_webvid_csv_from_the_command_line(
    tiny_pretrain_overrides: list[str], tiny_synthetic: Path, tmp_path: Path
) -> None:
    """The README's WebVid command: no path column, no split column, a bad row."""
    from cpd.cli import main

    csv_path = webvid_like(tiny_synthetic, tmp_path)
    run_dir = tmp_path / "webvid_run"
    # the README's preset, shrunk: a small 3D ResNet, the tiny text encoder, fp32
    argv = ["pretrain", "--config", "pretrain_instagram_r50", *tiny_pretrain_overrides,
            "model.arch=r3d10", "optim.amp=none", "optim.channels_last=false", "data.workers=0",
            f"data.manifest={csv_path}", f"data.video_root={tiny_synthetic}",
            "data.video_key={page_dir}/{videoid}.mp4", "data.caption_key=name",
            "data.id_key=videoid", "data.train_split=", "data.val_split=", "data.bad_rows=skip",
            "schedule.epochs=1", f"run.out={run_dir}"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 1  # 4 pairs
    (bad,) = [json.loads(x) for x in (run_dir / "bad_rows.jsonl").read_text().splitlines()]
    assert (bad["line"], bad["problem"]) == (6, "empty 'name'")
    saved = load_pretrain_config(str(run_dir / "config.yaml"))
    assert saved.data.video_key == "{page_dir}/{videoid}.mp4"


def cli(command: str, argv: list[str]) -> int:
    import importlib

    module = importlib.import_module(f"cpd.commands.{command}")
    parser = argparse.ArgumentParser(prog=f"cpd {command}")
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def cpd_model(tmp_path_factory: pytest.TempPathFactory, tiny_text_encoder: str) -> str:
    from cpd.models import ModelConfig, build_model, save_model

    torch.manual_seed(0)
    config = ModelConfig(arch="r3d10", base_width=8, text_encoder=tiny_text_encoder,
                         embed_dim=16, text_head_dim=32)  # fmt: skip
    path = tmp_path_factory.mktemp("cpd") / "export"
    save_model(build_model(config), path)
    return str(path)


def webvid_like(tiny_synthetic: Path, folder: Path) -> Path:
    """The tiny set's validation pairs as a WebVid-style CSV (no path column, a bad row)."""
    rows = [json.loads(x) for x in (tiny_synthetic / "captions.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "val"]
    text = "videoid,name,page_dir\n"
    for r in rows:
        page, name = r["video"].rsplit("/", 1)
        text += f"{name.removesuffix('.mp4')},{r['caption']},{page}\n"
    text += "broken,,videos\n"
    path = folder / "webvid_val.csv"
    path.write_text(text)
    return path


ONE_VIEW = ["--num-frames", "4", "--stride", "2", "--crop-size", "32", "--workers", "0",
            "--quiet", "--threads", "1"]  # fmt: skip
KEYS = ["--video-key", "{page_dir}/{videoid}.mp4", "--caption-key", "name", "--id-key", "videoid"]


def test_retrieval_and_embed_read_any_columns(
    cpd_model: str, tiny_synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = webvid_like(tiny_synthetic, tmp_path)
    base = [cpd_model, "--manifest", str(csv_path), "--video-root", str(tiny_synthetic), "--split",
            "all", *KEYS, *ONE_VIEW]  # fmt: skip
    assert cli("retrieval", [*base, "--out", str(tmp_path / "r0")]) == 2
    assert "line 6: empty 'name'" in capsys.readouterr().err
    out = tmp_path / "ret"
    argv = [*base, "--bad-rows", "skip", "--manifest-format", "csv", "--out", str(out)]
    assert cli("retrieval", argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["num_videos"] == 4 and results["num_bad_rows"] == 1
    assert results["protocol"]["video_key"] == "{page_dir}/{videoid}.mp4"
    assert results["protocol"]["manifest_format"] == "csv"
    (bad,) = [json.loads(x) for x in (out / "bad_rows.jsonl").read_text().splitlines()]
    assert (bad["line"], bad["problem"], bad["row"]) == (6, "empty 'name'", "broken,,videos")
    assert "1 bad manifest rows were skipped" in capsys.readouterr().err

    emb = tmp_path / "emb"
    argv = [cpd_model, "--manifest", str(csv_path), *KEYS, "--manifest-format", "csv",
            "--bad-rows", "skip", "--out", str(emb), "--quiet"]  # fmt: skip
    assert cli("embed", argv) == 0
    ids = [json.loads(x) for x in (emb / "texts_ids.jsonl").read_text().splitlines()]
    assert len(ids) == 4 and "broken" not in ids
    results = json.loads((emb / "results.json").read_text())
    assert results["protocol"]["format"] == "npy" and results["protocol"]["caption_key"] == "name"
    assert results["num_bad_rows"] == 1 and (emb / "bad_rows.jsonl").is_file()
