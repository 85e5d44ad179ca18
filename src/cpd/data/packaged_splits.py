"""The UCF101 and HMDB51 train/test splits shipped with the package (the official JSON files).

Users name a dataset and a split number and give their video folder; nothing else is needed::

    train = load_packaged_split("ucf101", 1, "/data/UCF-101", subset="train")

The JSON ids are file names without ``.avi``; videos live at ``<video_root>/<class>/<id>.avi``
(UCF101's ``UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi``, HMDB51's
``hmdb51/brush_hair/<name>.avi``: the layouts the datasets unpack to).
"""

from __future__ import annotations

from pathlib import Path

from cpd.data.actions import ActionSplit, read_split_json
from cpd.errors import DataError

__all__ = ["PACKAGED_DATASETS", "load_packaged_split", "packaged_split_path"]

# dataset -> file name pattern of its split files in cpd/data/splits/
_FILES = {"ucf101": "ucf101_0{}.json", "hmdb51": "hmdb51_{}.json"}
PACKAGED_DATASETS: tuple[str, ...] = tuple(_FILES)


def packaged_split_path(dataset: str, split: int) -> Path:
    """The path of a packaged split file, e.g. ``packaged_split_path("hmdb51", 2)``."""
    key = dataset.strip().lower().replace("-", "")
    if key not in _FILES:
        raise DataError(f"no packaged splits for {dataset!r}; available: {', '.join(_FILES)}")
    if split not in (1, 2, 3):
        raise DataError(f"{dataset} has splits 1, 2, 3; got {split!r}")
    # setuptools installs package data as plain files beside this module (no zip imports)
    return Path(__file__).with_name("splits") / _FILES[key].format(split)


def load_packaged_split(
    dataset: str, split: int, video_root: str | Path, subset: str | None = "train"
) -> ActionSplit:
    """Records of one subset (``"train"``/``"test"``, ``None`` = all) of a packaged split.

    Class order is the JSON's ``labels`` list (UCF101's ``classInd.txt`` order, HMDB51
    sorted), so a label means the same class in every split.
    """
    return read_split_json(packaged_split_path(dataset, split), video_root, subset=subset)
