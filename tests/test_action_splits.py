"""Action splits: UCF101 / HMDB51 official lists, split JSON (packaged), CSV; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cpd.data.actions import (
    ActionRecord,
    read_action_csv,
    read_hmdb51,
    read_split_json,
    read_ucf101,
)
from cpd.data.packaged_splits import load_packaged_split, packaged_split_path
from cpd.errors import DataError


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------- packaged JSON splits


@pytest.mark.parametrize(
    ("dataset", "n_train", "n_test", "n_classes", "first_class"),
    [("ucf101", 9537, 3783, 101, "ApplyEyeMakeup"), ("hmdb51", 3570, 1530, 51, "brush_hair")],
)
def test_packaged_split_1_counts(dataset, n_train, n_test, n_classes, first_class) -> None:
    train = load_packaged_split(dataset, 1, "/videos", subset="train")
    test = load_packaged_split(dataset, 1, "/videos", subset="test")
    assert (len(train), len(test)) == (n_train, n_test)
    assert train.num_classes == test.num_classes == n_classes
    assert train.classes[0] == first_class
    assert [r.index for r in train.records] == list(range(n_train))
    assert {r.label for r in train.records} == set(range(n_classes))
    assert not {r.video_id for r in train.records} & {r.video_id for r in test.records}
    r = test.records[0]
    assert r.path == f"/videos/{r.label_name}/{r.video_id}.avi"
    assert train.classes[r.label] == r.label_name


def test_packaged_ucf101_keeps_classind_order() -> None:
    # classInd.txt puts HammerThrow (36) after Hammering (35): not Python's sorted order
    classes = load_packaged_split("ucf101", 2, "/v").classes
    assert classes.index("Hammering") == 34 and classes.index("HammerThrow") == 35
    assert classes[-1] == "YoYo"


@pytest.mark.parametrize("split", [2, 3])
def test_packaged_hmdb51_drops_spurious_empty_class(split: int) -> None:
    # these files list "" first; keeping it would shift every label by one and give 52 classes
    assert "" in json.loads(packaged_split_path("hmdb51", split).read_text())["labels"]
    both = load_packaged_split("hmdb51", split, "/v", subset=None)
    assert both.num_classes == 51 and both.classes[0] == "brush_hair"
    assert both.classes == load_packaged_split("hmdb51", 1, "/v").classes


def test_packaged_split_unknown() -> None:
    assert "no packaged splits" in error_of(packaged_split_path, "kinetics", 1)
    assert "splits 1, 2, 3" in error_of(packaged_split_path, "ucf101", 4)


def test_split_json_bad_entries_named_by_key(tmp_path: Path) -> None:
    data = {
        "labels": ["a", "b"],
        "database": {
            "v1": {"subset": "training", "annotations": {"label": "a"}},
            "v2": {"subset": "training", "annotations": {"label": "zzz"}},
            "v3": {"subset": "bogus", "annotations": {"label": "a"}},
            "v4": {"subset": "validation"},
        },
    }
    msg = error_of(read_split_json, write(tmp_path / "s.json", json.dumps(data)), tmp_path)
    assert "key 'v2': unknown class 'zzz'" in msg
    assert "key 'v3': 'subset' must be" in msg
    assert "key 'v4': missing 'annotations'" in msg
    assert "3 problems" in msg


# ---------------------------------------------------------------- UCF101 official lists


def ucf_lists(root: Path, train: str | None = None, test: str | None = None) -> Path:
    write(root / "classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n3 YoYo\n")
    write(
        root / "trainlist01.txt",
        train or "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nYoYo/v_YoYo_g08_c01.avi 3\r\n",
    )
    write(
        root / "testlist01.txt", test or "Archery/v_Archery_g01_c01.avi\nYoYo/v_YoYo_g01_c02.avi\n"
    )
    return root


def test_ucf101_official_lists(tmp_path: Path) -> None:
    lists = ucf_lists(tmp_path / "ucfTrainTestlist")
    train = read_ucf101(lists, tmp_path / "UCF-101", 1, "train")
    assert train.classes == ("ApplyEyeMakeup", "Archery", "YoYo")
    assert train.records[1] == ActionRecord(
        1, "v_YoYo_g08_c01", str(tmp_path / "UCF-101/YoYo/v_YoYo_g08_c01.avi"), 2, "YoYo", "train"
    )
    test = read_ucf101(lists, tmp_path / "UCF-101", 1, "test")
    assert [(r.index, r.label, r.split) for r in test.records] == [(0, 1, "test"), (1, 2, "test")]
    assert len(read_ucf101(lists, tmp_path, 1, None)) == 4


def test_ucf101_bad_lines(tmp_path: Path) -> None:
    train = (
        "ApplyEyeMakeup/v_A_g01_c01.avi 1\n"  # 1 ok
        "ApplyEyeMakeup/v_A_g01_c02.avi\n"  # 2 no number
        "Archery/v_B_g01_c01.avi 7\n"  # 3 number out of range
        "Archery/v_B_g01_c02.avi 1\n"  # 4 number/folder mismatch
        "v_C_g01_c01.avi 2\n"  # 5 no folder
        "ApplyEyeMakeup/v_A_g01_c01.avi 1\n"  # 6 duplicate
        "Swimming/v_S_g01_c01.avi 2\n"  # 7 folder not a class (number says Archery)
    )
    msg = error_of(read_ucf101, ucf_lists(tmp_path, train=train), tmp_path)
    assert "trainlist01.txt: 6 problems" in msg
    for part in [
        "line 2: expected '<Class>/<video>.avi <number>'",
        "line 3: class number '7' is not in 1..3",
        "line 4: class number 1 is 'ApplyEyeMakeup' but the folder is 'Archery'",
        "line 5: video path 'v_C_g01_c01.avi' lacks the class folder",
        "line 6: duplicate video 'v_A_g01_c01', first at trainlist01.txt line 1",
        "line 7: class number 2 is 'Archery' but the folder is 'Swimming'",
    ]:
        assert part in msg, part


def test_ucf101_test_list_unknown_class_and_overlap(tmp_path: Path) -> None:
    test = "Swimming/v_S_g01_c01.avi\nYoYo/v_YoYo_g08_c01.avi\n"
    msg = error_of(read_ucf101, ucf_lists(tmp_path, test=test), tmp_path, 1, "test")
    assert "testlist01.txt: 2 problems" in msg
    assert "line 1: unknown class 'Swimming'" in msg
    assert "line 2: duplicate video 'v_YoYo_g08_c01', first at trainlist01.txt line 2" in msg


def test_ucf101_bad_class_index(tmp_path: Path) -> None:
    write(tmp_path / "classInd.txt", "1 A\n3 B\nC\n")
    msg = error_of(read_ucf101, tmp_path, tmp_path)
    assert "line 2: class number 3, expected 2" in msg
    assert "line 3: expected '<number> <ClassName>'" in msg


# ---------------------------------------------------------------- HMDB51 official lists


def test_hmdb51_official_lists(tmp_path: Path) -> None:
    splits = tmp_path / "testTrainMulti_7030_splits"
    write(splits / "wave_test_split1.txt", "w1.avi 1 \nw2.avi 2 \nw3.avi 0 \n")
    write(splits / "brush_hair_test_split1.txt", "Brushing [HD] 1.avi 1\nb2.avi 2\n")
    write(splits / "brush_hair_test_split2.txt", "b2.avi 1\n")
    train = read_hmdb51(splits, tmp_path / "hmdb51", 1, "train")
    assert train.classes == ("brush_hair", "wave")
    assert [(r.index, r.video_id, r.label) for r in train.records] == [
        (0, "Brushing [HD] 1", 0),
        (1, "w1", 1),
    ]
    assert train.records[0].path == str(tmp_path / "hmdb51/brush_hair/Brushing [HD] 1.avi")
    test = read_hmdb51(splits, tmp_path / "hmdb51", 1, "test")
    assert [r.video_id for r in test.records] == ["b2", "w2"]  # k=0 (w3) is unused


def test_hmdb51_bad_lines(tmp_path: Path) -> None:
    write(tmp_path / "run_test_split1.txt", "r1.avi 1\nr2.avi 5\nr3.avi\nsub/r4.avi 1\nr1.avi 2\n")
    msg = error_of(read_hmdb51, tmp_path, tmp_path)
    assert "run_test_split1.txt: 4 problems" in msg
    assert "line 2: expected '<name>.avi <0|1|2>', got 'r2.avi 5'" in msg
    assert "line 3: expected '<name>.avi <0|1|2>'" in msg
    assert "line 4: video name 'sub/r4.avi' must not contain a folder" in msg
    assert "line 5: duplicate video 'r1'" in msg
    assert "no '<class>_test_split2.txt' files" in error_of(read_hmdb51, tmp_path, tmp_path, 2)


# ---------------------------------------------------------------- generic CSV


def test_action_csv_sorted_classes_across_splits(tmp_path: Path) -> None:
    text = "video,label,split\nx/1.mp4,zebra,train\nx/2.mp4,ant,test\nx/3.mp4,mole,train\n"
    path = write(tmp_path / "a.csv", text)
    train = read_action_csv(path, tmp_path, subset="train")
    assert train.classes == ("ant", "mole", "zebra")  # from all rows, so test labels agree
    assert [(r.index, r.label, r.label_name) for r in train.records] == [
        (0, 2, "zebra"),
        (1, 1, "mole"),
    ]
    test = read_action_csv(path, tmp_path, subset="validation")
    assert [(r.index, r.label, r.split) for r in test.records] == [(0, 0, "test")]


def test_action_csv_given_class_list(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "video,label\n1.mp4,b\n2.mp4,a\n")
    classes_file = write(tmp_path / "classes.txt", "b\na\nc\n")
    for classes in (["b", "a", "c"], classes_file):
        split = read_action_csv(path, tmp_path, classes=classes)
        assert split.classes == ("b", "a", "c")
        assert [r.label for r in split.records] == [0, 1]
        assert {r.split for r in split.records} == {None}


def test_action_csv_bad_rows(tmp_path: Path) -> None:
    data = (
        b"video,label,split\n"
        b"1.mp4,a,train\n"  # 2 ok
        b"2.mp4,nope,train\n"  # 3 unknown class
        b"/abs.mp4,a,train\n"  # 4 absolute
        b"3.mp4,a,holdout\n"  # 5 bad split
        b"4.mp4,,train\n"  # 6 empty label
        b"1.mp4,b,test\n"  # 7 duplicate video
    ) + b"5.mp4,\xc3(,train\n"  # 8 not UTF-8
    msg = error_of(read_action_csv, write(tmp_path / "a.csv", data), tmp_path, classes=["a", "b"])
    for part in [
        "line 3: unknown class 'nope'",
        "line 4: video path '/abs.mp4' is absolute",
        "line 5: split 'holdout' is not train/test",
        "line 6: empty label",
        "line 7: duplicate video '1', first at a.csv line 2",
        "line 8: not UTF-8",
    ]:
        assert part in msg, part


def test_unknown_subset(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "video,label\n1.mp4,a\n")
    assert "unknown subset 'dev'" in error_of(read_action_csv, path, tmp_path, subset="dev")
