"""Labelled action videos (UCF101, HMDB51, split JSON, CSV) -> :class:`ActionSplit`.

Labels are 0-based ints everywhere; ``ActionSplit.classes[label]`` is the class name.
``ActionRecord.index`` is the position (0..N-1, file order) among the records the ``subset``
filter keeps: stable for a given split file and subset. Subsets are ``"train"`` and ``"test"``
(``"training"``, ``"validation"``, ``"val"`` and ``"testing"`` are accepted too: in the official
split files the "validation" subset *is* the test list); ``None`` keeps every video.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cpd.data.manifests import (
    Problems,
    decode_lines,
    load_json_object,
    read_bytes,
    read_csv_rows,
    resolve_video_path,
)
from cpd.errors import DataError

__all__ = [
    "ActionRecord",
    "ActionSplit",
    "read_action_csv",
    "read_hmdb51",
    "read_split_json",
    "read_ucf101",
]

_SUBSETS = {
    "train": "train",
    "training": "train",
    "test": "test",
    "testing": "test",
    "val": "test",
    "validation": "test",
}


@dataclass(frozen=True)
class ActionRecord:
    """One labelled video: ``label`` is 0-based, ``label_name`` its class, ``split`` train/test.

    ``path`` is the video file (root joined) as a ``str``, as in :class:`CaptionRecord`.
    """

    index: int
    video_id: str
    path: str
    label: int
    label_name: str
    split: str | None


@dataclass(frozen=True)
class ActionSplit:
    """The records of one subset of a split, with the class names (``classes[label]``)."""

    records: tuple[ActionRecord, ...]
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)


def _subset(subset: str | None) -> str | None:
    if subset is None:
        return None
    key = subset.strip().lower()
    if key not in _SUBSETS:
        raise DataError(f"unknown subset {subset!r}; use 'train' or 'test' (or None for all)")
    return _SUBSETS[key]


def _text_lines(path: Path, problems: Problems) -> list[tuple[int, str]]:
    """Non-blank, stripped lines of a text file with their 1-based numbers."""
    lines = decode_lines(read_bytes(path), problems)
    return [(n, line.strip()) for n, line in enumerate(lines, start=1) if line and line.strip()]


class _Builder:
    """Accumulates records in order over one or more files, rejecting duplicate video ids."""

    def __init__(self, classes: Sequence[str], subset: str | None) -> None:
        self.classes = tuple(classes)
        self.label_of = {name: i for i, name in enumerate(self.classes)}
        self.subset = subset
        self.records: list[ActionRecord] = []
        self.seen: dict[str, str] = {}

    def add(
        self,
        problems: Problems,
        where: str,
        video_id: str,
        path: str,
        class_name: str,
        split: str | None,
    ) -> None:
        """Add one video, or record a problem if its class is unknown or its id repeats."""
        if class_name not in self.label_of:
            problems.add(where, f"unknown class {class_name!r}")
            return
        first = self.seen.get(video_id)
        if first is not None:
            problems.add(where, f"duplicate video {video_id!r}, first at {first}")
            return
        self.seen[video_id] = f"{Path(problems.source).name} {where}"
        if self.subset is not None and split != self.subset:
            return
        label = self.label_of[class_name]
        self.records.append(
            ActionRecord(len(self.records), video_id, path, label, class_name, split)
        )

    def finish(self, problems: Problems) -> ActionSplit:
        """Raise the collected problems of the last file, if any, else return the split."""
        problems.raise_if_any()
        return ActionSplit(tuple(self.records), self.classes)


def read_ucf101_classes(path: str | Path) -> list[str]:
    """Read UCF101's ``classInd.txt`` (lines ``"1 ApplyEyeMakeup"``, numbered 1..N in order)."""
    path = Path(path)
    problems = Problems(path)
    classes: list[str] = []
    for number, line in _text_lines(path, problems):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            problems.add(f"line {number}", f"expected '<number> <ClassName>', got {line!r}")
            continue
        if int(parts[0]) != len(classes) + 1:
            problems.add(f"line {number}", f"class number {parts[0]}, expected {len(classes) + 1}")
        if parts[1] in classes:
            problems.add(f"line {number}", f"duplicate class {parts[1]!r}")
        classes.append(parts[1])
    if not classes and not problems:
        problems.add("line 1", "no classes")
    problems.raise_if_any()
    return classes


def read_ucf101(
    split_dir: str | Path, video_root: str | Path, split: int = 1, subset: str | None = "train"
) -> ActionSplit:
    """Read UCF101's official lists from ``split_dir`` (the ``ucfTrainTestlist`` folder).

    ``classInd.txt`` gives the class order; ``trainlist0N.txt`` lines are
    ``"Class/v_Class_gXX_cYY.avi <class number>"``, ``testlist0N.txt`` lines omit the number.
    Videos live at ``<video_root>/<Class>/<name>.avi`` as the list paths say.
    """
    split_dir = Path(split_dir)
    if split not in (1, 2, 3):
        raise DataError(f"UCF101 has splits 1, 2, 3; got {split!r}")
    classes = read_ucf101_classes(split_dir / "classInd.txt")
    wanted = _subset(subset)
    lists = [
        ("train", split_dir / f"trainlist0{split}.txt"),
        ("test", split_dir / f"testlist0{split}.txt"),
    ]
    # Check both lists even for one subset, so a video listed in both is caught.
    builder = _Builder(classes, wanted)
    for part, path in lists:
        problems = Problems(path)
        for number, line in _text_lines(path, problems):
            where = f"line {number}"
            parts = line.split()
            # a test list line may carry the class number too; a train line must
            if not (len(parts) == 2 or (part == "test" and len(parts) == 1)):
                form = "<Class>/<video>.avi <number>" if part == "train" else "<Class>/<video>.avi"
                problems.add(where, f"expected '{form}', got {line!r}")
                continue
            relative = parts[0].replace("\\", "/")
            class_name = relative.split("/")[0] if "/" in relative else ""
            if not class_name:
                problems.add(where, f"video path {parts[0]!r} lacks the class folder")
                continue
            if len(parts) == 2:
                if not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
                    problems.add(where, f"class number {parts[1]!r} is not in 1..{len(classes)}")
                    continue
                if classes[int(parts[1]) - 1] != class_name:
                    problems.add(
                        where,
                        f"class number {parts[1]} is {classes[int(parts[1]) - 1]!r} but the folder is {class_name!r}",
                    )
                    continue
            try:
                video = resolve_video_path(video_root, relative)
            except ValueError as exc:
                problems.add(where, str(exc))
                continue
            video_id = posixpath.splitext(posixpath.basename(relative))[0]
            builder.add(problems, where, video_id, video, class_name, part)
        problems.raise_if_any()
    return builder.finish(problems)


_HMDB_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<n>[123])\.txt$")


def read_hmdb51(
    split_dir: str | Path,
    video_root: str | Path,
    split: int = 1,
    subset: str | None = "train",
) -> ActionSplit:
    """Read HMDB51's official ``testTrainMulti_7030_splits`` folder.

    One file per class, ``<class>_test_split<N>.txt``, lines ``"<name>.avi k"`` with k = 1 train,
    2 test, 0 unused (dropped). Classes are sorted by name (the order of the packaged JSON);
    videos live at ``<video_root>/<class>/<name>.avi``.
    """
    split_dir = Path(split_dir)
    if split not in (1, 2, 3):
        raise DataError(f"HMDB51 has splits 1, 2, 3; got {split!r}")
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: not a folder (expected testTrainMulti_7030_splits)")
    files = {}
    for file in split_dir.iterdir():
        m = _HMDB_FILE.match(file.name)
        if m and int(m["n"]) == split:
            files[m["cls"]] = file
    if not files:
        raise DataError(f"{split_dir}: no '<class>_test_split{split}.txt' files")
    classes = sorted(files)
    wanted = _subset(subset)
    builder = _Builder(classes, wanted)
    for class_name in classes:
        path = files[class_name]
        problems = Problems(path)
        for number, line in _text_lines(path, problems):
            where = f"line {number}"
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                problems.add(where, f"expected '<name>.avi <0|1|2>', got {line!r}")
                continue
            if parts[1] == "0":
                continue
            name = parts[0]
            if "/" in name or "\\" in name:
                problems.add(where, f"video name {name!r} must not contain a folder")
                continue
            video = os.path.join(video_root, class_name, name)
            builder.add(
                problems,
                where,
                posixpath.splitext(name)[0],
                video,
                class_name,
                "train" if parts[1] == "1" else "test",
            )
        problems.raise_if_any()
    return builder.finish(problems)


def read_split_json(
    path: str | Path, video_root: str | Path, subset: str | None = "train", ext: str = ".avi"
) -> ActionSplit:
    """Read a split file in the official code's JSON form.

    ``{"labels": [class, ...], "database": {video_id: {"subset": "training"|"validation",
    "annotations": {"label": class}}}}``. ``labels`` fixes the label order; empty class names
    in it are dropped (the packaged HMDB51 splits 2 and 3 list a spurious ``""`` first, which
    would shift every label by one). Videos live at ``<video_root>/<class>/<video_id><ext>``.
    """
    path = Path(path)
    obj = load_json_object(path)
    problems = Problems(path)
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("labels"), list)
        or not isinstance(obj.get("database"), dict)
    ):
        raise DataError(f"{path}: expected an object with a 'labels' list and a 'database' object")
    classes = []
    for i, name in enumerate(obj["labels"]):
        if not isinstance(name, str):
            problems.add(
                f"key 'labels'[{i}]", f"class name must be a string, got {type(name).__name__}"
            )
        elif name.strip() and name not in classes:
            classes.append(name)
        elif name.strip():
            problems.add(f"key 'labels'[{i}]", f"duplicate class {name!r}")
    builder = _Builder(classes, _subset(subset))
    for video_id, entry in obj["database"].items():
        where = f"key {video_id!r}"
        subset_name = entry.get("subset") if isinstance(entry, dict) else None
        annotations = entry.get("annotations") if isinstance(entry, dict) else None
        label = annotations.get("label") if isinstance(annotations, dict) else None
        if not isinstance(subset_name, str) or subset_name.strip().lower() not in _SUBSETS:
            problems.add(where, f"'subset' must be 'training' or 'validation', got {subset_name!r}")
            continue
        if not isinstance(label, str) or not label.strip():
            problems.add(where, "missing 'annotations': {'label': <class>}")
            continue
        try:
            video = resolve_video_path(video_root, f"{label}/{video_id}{ext}")
        except ValueError as exc:
            problems.add(where, str(exc))
            continue
        builder.add(problems, where, video_id, video, label, _SUBSETS[subset_name.strip().lower()])
    return builder.finish(problems)


def read_action_csv(
    path: str | Path,
    video_root: str | Path,
    subset: str | None = None,
    classes: Sequence[str] | str | Path | None = None,
) -> ActionSplit:
    """Read a CSV with header ``video,label[,split]``; ``label`` is a class name.

    Class order: ``classes`` if given (a list, or a file with one name per line), else the
    sorted names found in the whole file (all splits, so train and test agree on labels).
    """
    path = Path(path)
    problems = Problems(path)
    class_list = _class_list(classes)
    rows = [
        (where, {k: v.strip() for k, v in row.items()})
        for where, row in read_csv_rows(path, ("video", "label"), problems)
    ]
    if class_list is None:
        class_list = sorted({row["label"] for _, row in rows if row["label"]})
    builder = _Builder(class_list, _subset(subset))
    for where, row in rows:
        if not row["video"] or not row["label"]:
            problems.add(where, f"empty {'video' if not row['video'] else 'label'}")
            continue
        split_name = row.get("split") or None
        if split_name is not None and split_name.lower() not in _SUBSETS:
            problems.add(where, f"split {split_name!r} is not train/test")
            continue
        try:
            video = resolve_video_path(video_root, row["video"])
        except ValueError as exc:
            problems.add(where, str(exc))
            continue
        video_id = posixpath.splitext(row["video"].replace("\\", "/"))[0]
        builder.add(
            problems,
            where,
            video_id,
            video,
            row["label"],
            _SUBSETS[split_name.lower()] if split_name else None,
        )
    return builder.finish(problems)


def _class_list(classes: Sequence[str] | str | Path | None) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, (str, Path)):
        path = Path(classes)
        problems = Problems(path)
        names = [line for _, line in _text_lines(path, problems)]
        problems.raise_if_any()
    else:
        names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        raise DataError(
            f"class list {classes if isinstance(classes, (str, Path)) else ''} repeats a name"
        )
    return names
