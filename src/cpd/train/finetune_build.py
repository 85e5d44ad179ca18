"""``cpd finetune``'s data and classifier: the labelled split, clip settings, and the encoder of
``model.init`` with a new classifier; the optimizer.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cpd.config import ConfigError
from cpd.data import ActionDataset, ActionRecord, ActionSplit
from cpd.data.datasets import derive_seed
from cpd.errors import CheckpointError, DataError
from cpd.models import CPDModel, ModelConfig, ResNet3d, build_video_model, load_model
from cpd.train.finetune_config import FinetuneConfig, FinetuneDataConfig, resolved_lr
from cpd.train.loader import resolve_hflip

log = logging.getLogger(__name__)

VAL_CLIP_STREAM = 11  # salt of the validation clips' seed (training clips: run.seed itself)


# --- data ---------------------------------------------------------------------------------


@dataclass
class FinetuneData:
    """The training clips, the validation clips (``val.clip``), the test records, the cache."""

    classes: tuple[str, ...]
    train: ActionDataset
    val: ActionDataset | None
    test: tuple[ActionRecord, ...]
    hflip: float
    cache: Any = None  # FrameCache or None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_split(cfg: FinetuneDataConfig, subset: str) -> ActionSplit:
    """The ``subset`` ("train" / "test") records of ``data.fold`` (:mod:`cpd.data.action_sets`)."""
    from cpd.data.action_sets import load_action_dataset

    split = load_action_dataset(cfg.dataset, cfg.fold, subset, video_root=cfg.video_root,
                                split_dir=cfg.split_dir, csv=cfg.csv, classes=cfg.classes)  # fmt: skip
    if not len(split):
        raise DataError(f"data: no {subset} videos in split {cfg.fold} of {cfg.dataset}")
    return split


def dataset_folders(cfg: FinetuneDataConfig) -> list[Path]:
    """Where the dataset's ``dataset.json`` may be: beside the split lists or the csv, in the
    video root or above it."""
    folders = [Path(p).parent for p in (cfg.split_dir, cfg.csv) if p]
    if cfg.video_root:
        folders += [Path(cfg.video_root), Path(cfg.video_root).parent]
    return folders


def _subsample(records: tuple[ActionRecord, ...], limit: int) -> list[ActionRecord]:
    """At most ``limit`` records, evenly spaced (0 = all), renumbered 0..n-1 for a dataset."""
    if limit and limit < len(records):
        picks = [records[(i * len(records)) // limit] for i in range(limit)]
    else:
        picks = list(records)
    return [dataclasses.replace(r, index=i) for i, r in enumerate(picks)]


def build_data(cfg: FinetuneConfig, *, progress: bool = False, val: bool = True) -> FinetuneData:
    """Read the split, build the training / validation datasets, fill the frame cache."""
    d = cfg.data
    train_split, test_split = load_split(d, "train"), load_split(d, "test")
    if train_split.classes != test_split.classes:
        raise DataError("data: the train and test lists disagree on the classes")
    hflip = resolve_hflip(d.hflip, dataset_folders(d))
    scale = tuple(d.scale_range) if d.scale_range else None
    cache = None
    if d.cache_frames:
        from cpd.data import FrameCache
        from cpd.video import default_scale_range

        top = (scale or default_scale_range(d.crop_size))[1]
        short = d.cache_short_side or max(top, cfg.test.crop_size or d.crop_size)
        cache = FrameCache(short_side=short, max_bytes=int(d.cache_max_gb * 1e9))
    clip = dict(num_frames=d.num_frames, stride=d.stride, crop_size=d.crop_size,
                seed=cfg.run.seed, max_failure_ratio=d.max_failure_ratio)  # fmt: skip
    train = ActionDataset(train_split.records, train=True, hflip=hflip, scale_range=scale,
                          loader=cache, **clip)  # type: ignore[arg-type]  # fmt: skip
    val_set = None
    if val and cfg.run.val_every > 0:
        source = test_split if cfg.val.split == "test" else train_split
        records = _subsample(source.records, cfg.val.max_videos)
        if cfg.val.clip == "random":
            # the official validation clip: training-style (random window, scale jitter, random
            # crop) without the flip, drawn from (seed, epoch, index) in a stream of its own
            val_clip = dict(clip, seed=derive_seed(cfg.run.seed, 0, 0, stream=VAL_CLIP_STREAM))
            val_set = ActionDataset(records, train=True, hflip=0.0, scale_range=scale,
                                    loader=cache, **val_clip)  # type: ignore[arg-type]  # fmt: skip
        else:
            val_set = ActionDataset(records, train=False, num_clips=1, num_crops=1,
                                    multiview_loader=cache.load_clips if cache else None,
                                    **clip)  # type: ignore[arg-type]  # fmt: skip
    if cache is not None:
        # fill before DataLoader workers fork, so that they share the decoded frames
        paths = train.paths + [r.path for r in test_split.records]
        cache.fill(paths, workers=max(d.workers, 1), progress=progress)
    return FinetuneData(train_split.classes, train, val_set, test_split.records, hflip, cache)


# --- model --------------------------------------------------------------------------------


def build_classifier(cfg: FinetuneConfig, num_classes: int) -> ResNet3d:
    """The encoder of ``model.init`` (or a random one) with a new ``fc`` of ``num_classes``.

    A CPD model (export, training checkpoint or official pretraining checkpoint) gives its
    ``visual_encoder``; a classifier (ours or an official finetuning checkpoint) its weights.
    """
    m = cfg.model
    if m.init == "random":
        config = ModelConfig(arch=m.arch or "r3d50", base_width=m.base_width or 64,
                             shortcut=m.shortcut or "A", dropout=m.dropout,
                             temporal_stages=list(m.temporal_stages or [3, 4]),
                             num_classes=num_classes)  # fmt: skip
        model = build_video_model(config)
        model.config = config
        return model
    loaded = load_model(m.init)
    if isinstance(loaded, CPDModel):
        encoder, base = loaded.visual_encoder, loaded.config
    elif isinstance(loaded, ResNet3d):
        encoder, base = loaded, loaded.config
    else:  # pragma: no cover - load_model returns one of the two
        raise CheckpointError(f"{m.init}: not a video model ({type(loaded).__name__})")
    if not isinstance(base, ModelConfig):
        raise CheckpointError(f"{m.init}: the loaded model carries no ModelConfig")
    for key in ("arch", "base_width", "shortcut", "temporal_stages"):
        wanted = getattr(m, key)
        if wanted is not None and wanted != getattr(base, key):
            raise ConfigError(f"model.{key}={wanted} but {m.init} holds {getattr(base, key)}")
    encoder.reset_classifier(num_classes, m.dropout)
    # a classifier-only config: exports of this model hold no text tower
    encoder.config = dataclasses.replace(base, num_classes=num_classes, dropout=m.dropout)
    return encoder.train()


def set_train_mode(model: ResNet3d, mode: str) -> None:
    """Train mode for ``finetune`` and ``linear_official`` (the official code's linear protocol:
    BatchNorm uses batch statistics and re-estimates its running statistics, dropout is on);
    for ``linear`` only the head (dropout, fc) is in train mode and the encoder stays in eval
    mode (fixed BatchNorm statistics)."""
    if mode in ("finetune", "linear_official"):
        model.train()
        return
    model.eval()
    model.dropout.train()
    model.fc.train()


def freeze_encoder(model: ResNet3d) -> None:
    """Only ``fc`` keeps gradients (the ``linear*`` modes)."""
    freeze_stages(model, 5)


def trained_prefixes(train_from: int) -> tuple[str, ...] | None:
    """Parameter-name prefixes that train from stage ``train_from`` (None: all of them).

    As the official ``get_fine_tuning_parameters(model, ft_begin_index)``: 0 = everything,
    k = ``layer{k}`` .. ``layer4`` and ``fc`` (5 = ``fc`` only); the stem (``conv1``,
    ``bn1``) trains only at 0.
    """
    if train_from == 0:
        return None
    return tuple(f"layer{i}." for i in range(train_from, 5)) + ("fc.",)


def freeze_stages(model: ResNet3d, train_from: int) -> None:
    """``requires_grad`` off for every parameter before stage ``train_from`` (see
    :func:`trained_prefixes`); :func:`build_optimizer` then leaves them out, as the official
    code does. BatchNorm modes are :func:`set_train_mode`'s business."""
    keep = trained_prefixes(train_from)
    for name, p in model.named_parameters():
        p.requires_grad_(keep is None or name.startswith(keep))


def build_optimizer(cfg: FinetuneConfig, model: nn.Module) -> torch.optim.SGD:
    """SGD over the trainable parameters; 1-D ones without decay if ``no_decay_norm_bias``."""
    o, lr = cfg.optim, resolved_lr(cfg)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if o.no_decay_norm_bias and p.dim() <= 1 else decay).append(p)
    groups = [{"params": ps, "name": n, "base_lr": lr, "weight_decay": wd}
              for n, ps, wd in (("main", decay, o.weight_decay), ("no_decay", no_decay, 0.0))
              if ps]  # fmt: skip
    return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov)
