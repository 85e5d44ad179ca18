"""CPD: learning spatiotemporal video features from video-text pair discrimination.

The public API is imported lazily so that ``import cpd`` (and ``cpd --help``) stays fast and
does not pull in PyTorch, PyAV or transformers until they are used. ``__all__`` holds the
errors, the training configs with their loaders, ``pretrain`` / ``finetune``, building, loading
and saving (exporting) models, clips, caption manifests and datasets, evaluation metrics and
the losses; everything else, such as the reader of one file format, is in its module
(``cpd.data``, ``cpd.video``, ``cpd.models``, ``cpd.eval``, ...).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it. Readers of one file format (read_ucf101,
# read_instagram_json, ...) stay in their modules (cpd.data); the errors are every one that a
# function exported here raises for bad input.
_EXPORTS: dict[str, str] = {
    # errors
    "CPDError": "cpd.errors",
    "VideoDecodeError": "cpd.errors",
    "DataError": "cpd.errors",
    "CheckpointError": "cpd.errors",
    "ConfigError": "cpd.config",
    "CacheBudgetError": "cpd.data.cache",
    "TrainingInterrupted": "cpd.train.run",
    "TrainingDiverged": "cpd.train.run",
    # video
    "load_clip": "cpd.video",
    "load_clips": "cpd.video",
    "VideoBytes": "cpd.video",
    "VideoSlice": "cpd.video",
    # data
    "CaptionRecord": "cpd.data",
    "ActionRecord": "cpd.data",
    "ActionSplit": "cpd.data",
    "read_caption_manifest": "cpd.data",
    "load_packaged_split": "cpd.data",
    "VideoCaptionDataset": "cpd.data",
    "ActionDataset": "cpd.data",
    "collate": "cpd.data",
    "FrameCache": "cpd.data",
    "write_synthetic_dataset": "cpd.data",
    # training
    "PretrainConfig": "cpd.train.config",
    "load_pretrain_config": "cpd.train.config",
    "pretrain": "cpd.train.pretrain",
    "FinetuneConfig": "cpd.train.finetune_config",
    "load_finetune_config": "cpd.train.finetune_config",
    "finetune": "cpd.train.finetune",
    # evaluation
    "retrieval_metrics": "cpd.eval",
    "class_text_embeddings": "cpd.eval.zeroshot",
    "zeroshot_metrics": "cpd.eval.zeroshot",
    # models
    "ModelConfig": "cpd.models",
    "CPDModel": "cpd.models",
    "ResNet3d": "cpd.models",
    "build_model": "cpd.models",
    "load_model": "cpd.models",
    "load_cpd_model": "cpd.models",
    "save_model": "cpd.models",
    "load_official_checkpoint": "cpd.models",
    # losses
    "MemoryBankNCELoss": "cpd.losses",
    "InfoNCELoss": "cpd.losses",
    "temporal_negatives": "cpd.losses",
}

__all__ = ["__version__", *_EXPORTS]

# the library's packages, reachable as ``cpd.data`` etc. after a bare ``import cpd`` (the
# command line, cpd.cli and cpd.commands, is not part of the library)
_SUBPACKAGES = frozenset({"config", "data", "dist", "errors", "eval", "losses", "models", "train",
                          "video"})  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"cpd.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cpd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
