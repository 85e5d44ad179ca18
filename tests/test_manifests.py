"""Caption manifests: every format, and every kind of bad input reported with its line/key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cpd.data.manifests import (
    CaptionRecord,
    normalize_split,
    read_caption_csv,
    read_caption_jsonl,
    read_caption_manifest,
    read_instagram_json,
)
from cpd.errors import DataError


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------- Instagram JSON


def test_instagram_json_records_and_split_filter(tmp_path: Path) -> None:
    data = {
        "111": {"subset": "training", "caption": "  sunset at the beach  "},
        "222": {"subset": "validation", "caption": "a cat"},
        "333": {"subset": "training", "caption": "pasta night", "likes": 7},
    }
    path = write(tmp_path / "ig.json", json.dumps(data))
    train = read_instagram_json(path, tmp_path / "videos", split="train")
    assert [r.video_id for r in train] == ["111", "333"]
    assert [r.index for r in train] == [0, 1]
    assert train[0] == CaptionRecord(
        0,
        "111",
        str(tmp_path / "videos" / "trimmed_resize_111.mp4"),
        "sunset at the beach",
        "train",
    )
    assert dict(train[1].meta) == {"likes": 7}
    val = read_instagram_json(path, tmp_path / "videos", split="validation")
    assert [(r.index, r.video_id, r.split) for r in val] == [(0, "222", "val")]
    assert len(read_instagram_json(path, tmp_path)) == 3
    # the default format for .json is the Instagram one
    assert read_caption_manifest(path, tmp_path / "videos", split="val") == val


def test_instagram_json_collects_all_problems_by_key(tmp_path: Path) -> None:
    text = (
        '{"1": {"subset": "training", "caption": ""},\n'
        ' "2": {"subset": "training"},\n'
        ' "3": "not an object",\n'
        ' "../x": {"subset": "training", "caption": "escape"},\n'
        ' "4": {"subset": "training", "caption": "fine"}}'
    )
    msg = error_of(read_instagram_json, write(tmp_path / "ig.json", text), tmp_path)
    assert "ig.json: 4 problems" in msg
    assert "key '1': empty 'caption'" in msg
    assert "key '2': missing field 'caption'" in msg
    assert "key '3': expected an object" in msg
    assert "key '../x': video id contains a path separator" in msg


def test_instagram_json_duplicate_key(tmp_path: Path) -> None:
    text = (
        '{"7": {"subset": "training", "caption": "a"}, "7": {"subset": "training", "caption": "b"}}'
    )
    msg = error_of(read_instagram_json, write(tmp_path / "ig.json", text), tmp_path)
    assert "key '7': duplicate key" in msg


def test_json_not_utf8_names_line(tmp_path: Path) -> None:
    data = b'{"1": {"subset": "training",\n "caption": "caf\xe9"}}'
    msg = error_of(read_instagram_json, write(tmp_path / "ig.json", data), tmp_path)
    assert "line 2: not UTF-8" in msg


def test_json_syntax_error_names_line(tmp_path: Path) -> None:
    msg = error_of(read_instagram_json, write(tmp_path / "ig.json", '{"1": \n\n{,}}'), tmp_path)
    assert "line 3: invalid JSON" in msg


def test_missing_file(tmp_path: Path) -> None:
    assert "cannot read" in error_of(read_caption_jsonl, tmp_path / "nope.jsonl", tmp_path)


# ---------------------------------------------------------------- JSONL


def test_jsonl_records_meta_and_splits(tmp_path: Path) -> None:
    lines = [
        {"video": "a/1.mp4", "caption": "one", "split": "train", "meta": {"src": "webvid"}},
        {"video": "a/2.mp4", "caption": "two", "split": "val"},
        {"video": "a/1.mp4", "caption": "one again", "split": "train"},  # 2nd caption, same video
        {"video": "b/3.mp4", "caption": "three"},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n\n"
    path = write(tmp_path / "m.jsonl", text)
    everything = read_caption_jsonl(path, tmp_path)
    assert [r.index for r in everything] == [0, 1, 2, 3]
    assert [r.split for r in everything] == ["train", "val", "train", None]
    assert everything[0].path == str(tmp_path / "a" / "1.mp4")
    assert everything[0].video_id == "a/1" == everything[2].video_id
    assert dict(everything[0].meta) == {"meta": {"src": "webvid"}}
    train = read_caption_manifest(path, tmp_path, split="training")
    assert [(r.index, r.caption) for r in train] == [(0, "one"), (1, "one again")]


def test_jsonl_every_bad_row_reported_with_line(tmp_path: Path) -> None:
    good = json.dumps({"video": "ok.mp4", "caption": "fine"})
    rows = [
        good,  # 1
        json.dumps({"caption": "no video"}),  # 2 missing field
        json.dumps({"video": "v.mp4", "caption": "   "}),  # 3 empty caption
        json.dumps({"video": "/abs/v.mp4", "caption": "x"}),  # 4 absolute
        json.dumps({"video": "a/../../v.mp4", "caption": "x"}),  # 5 escapes
        good,  # 6 duplicate of line 1
        "{not json",  # 7
        "[1, 2]",  # 8
        json.dumps({"video": "x.mp4", "caption": 5}),  # 9 wrong type
    ]
    data = ("\n".join(rows) + "\n").encode() + b'{"video": "y.mp4", "caption": "\xff\xfe"}\n'  # 10
    msg = error_of(read_caption_jsonl, write(tmp_path / "m.jsonl", data), tmp_path)
    assert "m.jsonl: 9 problems" in msg
    expected = [
        "line 2: missing field 'video'",
        "line 3: empty 'caption'",
        "line 4: video path '/abs/v.mp4' is absolute",
        "line 5: video path 'a/../../v.mp4' escapes the data root",
        "line 6: duplicate pair ('ok.mp4', 'fine'), first at line 1",
        "line 7: invalid JSON",
        "line 8: expected a JSON object",
        "line 9: field 'caption' must be a string",
        "line 10: not UTF-8",
    ]
    for part in expected:
        assert part in msg, part


def test_jsonl_duplicate_explicit_id(tmp_path: Path) -> None:
    text = '{"id": "v1", "video": "a.mp4", "caption": "x"}\n{"id": "v1", "video": "b.mp4", "caption": "y"}\n'
    msg = error_of(read_caption_jsonl, write(tmp_path / "m.jsonl", text), tmp_path)
    assert "line 2: duplicate id 'v1', first at line 1" in msg


def test_problem_list_is_capped_with_count(tmp_path: Path) -> None:
    text = "".join('{"video": "v.mp4", "caption": " "}\n' for _ in range(30))
    msg = error_of(read_caption_jsonl, write(tmp_path / "m.jsonl", text), tmp_path)
    assert "30 problems" in msg and "... and 10 more" in msg
    assert len(re.findall(r"empty 'caption'", msg)) == 20


def test_path_inside_root_with_dotdot_is_allowed(tmp_path: Path) -> None:
    text = '{"video": "a/../b/v.mp4", "caption": "x"}\n'
    (record,) = read_caption_jsonl(write(tmp_path / "m.jsonl", text), tmp_path)
    assert record.path == str(tmp_path / "b" / "v.mp4")


# ---------------------------------------------------------------- CSV


def test_csv_records_extra_columns_and_multiline_caption(tmp_path: Path) -> None:
    text = (
        "\ufeffvideo,caption,split,duration\n"
        "clips/1.mp4,a dog runs,train,12\n"
        'clips/2.mp4,"two lines,\nwith comma",val,9\n'
        "\n"
        "clips/3.mp4,a bird,,3\n"
    )
    records = read_caption_csv(write(tmp_path / "m.csv", text), tmp_path)
    assert [r.caption for r in records] == ["a dog runs", "two lines,\nwith comma", "a bird"]
    assert [r.split for r in records] == ["train", "val", None]
    assert dict(records[0].meta) == {"duration": "12"}
    val = read_caption_manifest(tmp_path / "m.csv", tmp_path, split="validation")
    assert [(r.index, r.video_id) for r in val] == [(0, "clips/2")]


def test_csv_bad_rows_reported_with_start_line(tmp_path: Path) -> None:
    data = (
        b"video,caption\n"  # 1
        b'ok.mp4,"multi\nline"\n'  # 2-3
        b"../up.mp4,escape\n"  # 4
        b"only_one_field\n"  # 5
        b",no video\n"  # 6
        b"ok.mp4,\n"  # 7
    ) + b"bad.mp4,caf\xe9\n"  # 8
    msg = error_of(read_caption_csv, write(tmp_path / "m.csv", data), tmp_path)
    for part in [
        "line 4: video path '../up.mp4' escapes the data root",
        "line 5: 1 fields, the header has 2",
        "line 6: empty 'video'",
        "line 7: empty 'caption'",
        "line 8: not UTF-8",
    ]:
        assert part in msg, part
    assert "line 2" not in msg and "line 3" not in msg


def test_csv_header_must_name_columns(tmp_path: Path) -> None:
    msg = error_of(read_caption_csv, write(tmp_path / "m.csv", "path,text\na.mp4,x\n"), tmp_path)
    assert (
        "line 1: header lacks column(s) 'video' (video_key), 'caption' (caption_key); "
        "columns present: path, text"
    ) in msg


def test_unknown_format(tmp_path: Path) -> None:
    assert "unknown manifest format" in error_of(
        read_caption_manifest, write(tmp_path / "m.txt", ""), tmp_path
    )


def test_normalize_split() -> None:
    assert [normalize_split(s) for s in ["Training", "validation", "VAL", "test", "holdout"]] == [
        "train",
        "val",
        "val",
        "test",
        "holdout",
    ]
