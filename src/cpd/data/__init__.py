"""Data: manifests and split files -> records -> datasets.

* :mod:`cpd.data.manifests`: video-caption manifests (Instagram-300k JSON, JSONL, CSV).
* :mod:`cpd.data.actions`: labelled action videos (UCF101 / HMDB51 lists, split JSON, CSV).
* :mod:`cpd.data.packaged_splits`: the UCF101 / HMDB51 splits shipped with the package.
* :mod:`cpd.data.datasets`: PyTorch datasets, the failure policy, ``collate``.
* :mod:`cpd.data.cache`: decoded uint8 frames kept in memory, served as clips (``FrameCache``).
* :mod:`cpd.data.synthetic`: the embedded synthetic dataset (``cpd synth``).

The record readers need only the standard library; the datasets (PyTorch) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from cpd.data.actions import (
    ActionRecord,
    ActionSplit,
    read_action_csv,
    read_hmdb51,
    read_split_json,
    read_ucf101,
)
from cpd.data.manifests import (
    CaptionRecord,
    read_caption_csv,
    read_caption_jsonl,
    read_caption_manifest,
    read_instagram_json,
)
from cpd.data.packaged_splits import load_packaged_split, packaged_split_path

_LAZY = {
    name: "cpd.data.datasets"
    for name in (
        "ActionDataset",
        "FailurePolicy",
        "VideoCaptionDataset",
        "collate",
        "default_tokenizer",
        "derive_seed",
        "tokenize_captions",
    )
}
_LAZY.update({name: "cpd.data.cache" for name in ("FrameCache", "CachedVideo", "CacheBudgetError")})
_LAZY["write_synthetic_dataset"] = "cpd.data.synthetic"

__all__ = [
    "ActionRecord",
    "ActionSplit",
    "CaptionRecord",
    "load_packaged_split",
    "packaged_split_path",
    "read_action_csv",
    "read_caption_csv",
    "read_caption_jsonl",
    "read_caption_manifest",
    "read_hmdb51",
    "read_instagram_json",
    "read_split_json",
    "read_ucf101",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cpd.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
