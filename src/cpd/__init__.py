"""CPD: learning spatiotemporal video features from video-text pair discrimination.

The public API is imported lazily so that ``import cpd`` (and ``cpd --help``) stays fast and
does not pull in PyTorch, PyAV or transformers until they are used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "VideoDecodeError": "cpd.errors",
    "DataError": "cpd.errors",
    "CheckpointError": "cpd.errors",
    # video
    "load_clip": "cpd.video",
    "load_clips": "cpd.video",
    "VideoBytes": "cpd.video",
    # data
    "CaptionRecord": "cpd.data",
    "ActionRecord": "cpd.data",
    "ActionSplit": "cpd.data",
    "read_caption_manifest": "cpd.data",
    "read_instagram_json": "cpd.data",
    "read_ucf101": "cpd.data",
    "read_hmdb51": "cpd.data",
    "read_split_json": "cpd.data",
    "read_action_csv": "cpd.data",
    "load_packaged_split": "cpd.data",
    "VideoCaptionDataset": "cpd.data",
    "ActionDataset": "cpd.data",
    "collate": "cpd.data",
    "FrameCache": "cpd.data",
    "write_synthetic_dataset": "cpd.data",
    # training
    "pretrain": "cpd.train.pretrain",
    "load_pretrain_config": "cpd.train.config",
    "finetune": "cpd.train.finetune",
    "load_finetune_config": "cpd.train.finetune_config",
    # evaluation
    "retrieval_metrics": "cpd.eval",
    # models
    "ModelConfig": "cpd.models",
    "CPDModel": "cpd.models",
    "ResNet3d": "cpd.models",
    "build_model": "cpd.models",
    "load_model": "cpd.models",
    "save_model": "cpd.models",
    "load_official_checkpoint": "cpd.models",
    # losses
    "MemoryBankNCELoss": "cpd.losses",
    "InfoNCELoss": "cpd.losses",
    "temporal_negatives": "cpd.losses",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cpd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
