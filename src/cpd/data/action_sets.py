"""One entry point for the labelled action datasets that finetuning and the evaluation
commands read, by name:

* ``ucf101`` / ``hmdb51``: the packaged official splits (fold 1..3) over the videos in
  ``video_root``; with ``split_dir`` the datasets' own list files instead
  (``ucfTrainTestlist/`` or ``testTrainMulti_7030_splits/``).
* ``ucf-layout``: any dataset in UCF101's list layout (``classInd.txt``, ``trainlist0N.txt``,
  ``testlist0N.txt`` in ``split_dir``), such as ``cpd synth``'s ``OUT/ucfTrainTestlist``;
  ``video_root`` defaults to the folder ``videos`` beside ``split_dir``.
* ``csv``: a CSV file with header ``video,label[,split]`` (``classes`` fixes the order).
"""

from __future__ import annotations

from pathlib import Path

from cpd.data.actions import ActionSplit
from cpd.errors import DataError

__all__ = ["ACTION_DATASETS", "load_action_dataset"]

ACTION_DATASETS = ("ucf101", "hmdb51", "ucf-layout", "csv")


def load_action_dataset(
    dataset: str,
    fold: int,
    split: str = "test",
    *,
    video_root: str | Path | None = None,
    split_dir: str | Path | None = None,
    csv: str | Path | None = None,
    classes: str | Path | None = None,
) -> ActionSplit:
    """The ``split`` records ("train", "test" or "all") of official split ``fold`` of
    ``dataset`` (see the module docstring); a missing setting raises :class:`DataError`
    naming the option."""
    from cpd.data import load_packaged_split, read_action_csv, read_hmdb51, read_ucf101

    if dataset not in ACTION_DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; one of {', '.join(ACTION_DATASETS)}")
    subset = None if split == "all" else split
    if dataset == "csv":
        if not csv:
            raise DataError("dataset csv needs a CSV file (--csv / data.csv)")
        return read_action_csv(csv, video_root or Path(csv).parent, subset, classes=classes)
    if dataset == "ucf-layout":
        if not split_dir:
            raise DataError("dataset ucf-layout needs the folder of classInd.txt "
                            "(--split-dir / data.split_dir)")  # fmt: skip
        root = video_root or _default_video_root(Path(split_dir))
        return read_ucf101(split_dir, root, fold, subset)
    if not video_root:
        raise DataError(f"dataset {dataset} needs the video folder (--video-root / "
                        "data.video_root)")  # fmt: skip
    if split_dir:
        reader = read_ucf101 if dataset == "ucf101" else read_hmdb51
        return reader(split_dir, video_root, fold, subset)
    return load_packaged_split(dataset, fold, video_root, subset)


def _default_video_root(split_dir: Path) -> Path:
    beside = split_dir.parent / "videos"
    return beside if beside.is_dir() else split_dir.parent
