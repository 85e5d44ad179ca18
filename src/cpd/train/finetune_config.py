"""The finetuning / linear-probe configuration: typed sections loaded from YAML.

Sections (``cpd finetune --print-config`` shows every key with its resolved value):

* ``data``: the labelled dataset (UCF101, HMDB51, a UCF-layout folder, a CSV), split, clip shape,
  frame cache;
* ``model``: where the encoder starts (``init``: a cpd export / checkpoint, an official CPD
  checkpoint, or ``random``), the architecture for random starts, the classifier's dropout;
* ``mode``: ``finetune`` (everything trains), ``linear`` (encoder frozen in eval mode, only
  the classifier trains on clips), ``linear_features`` (features extracted once, a linear
  classifier trained on them: see :mod:`cpd.train.probe`);
* ``optim`` / ``schedule``: SGD and the lr schedule (ReduceLROnPlateau on validation accuracy,
  the paper's, or step / cosine);
* ``val``: clip-level accuracy on the test split each epoch (drives the plateau schedule);
* ``test``: the final multi-view test (10 clips x 3 crops in the paper);
* ``probe``: settings of ``mode: linear_features``;
* ``run``: as for pretraining (output directory, seed, resume, checkpoints, logging).

Values are resolved as for pretraining: defaults (the paper's UCF101 recipe), the YAML file of
``--config``, then ``key=value`` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cpd.config import ConfigError, load_config
from cpd.train.config import RunConfig, check_common, find_preset

__all__ = [
    "ClassifierConfig",
    "FinetuneConfig",
    "FinetuneDataConfig",
    "FinetuneOptimConfig",
    "FinetuneRunConfig",
    "FinetuneScheduleConfig",
    "ProbeConfig",
    "TestConfig",
    "ValConfig",
    "load_finetune_config",
]


@dataclass
class FinetuneDataConfig:
    """The labelled videos and how training clips are cut.

    Attributes:
        dataset: "ucf101" / "hmdb51" (the packaged official splits over ``video_root``, or the
            datasets' own list files in ``split_dir``), "ucf-layout" (UCF101-style lists in
            ``split_dir``, e.g. ``cpd synth``'s ``OUT/ucfTrainTestlist``), "csv".
        split: split number 1..3.
        video_root: folder of the videos (ucf-layout: default ``split_dir/../videos``).
        split_dir / csv / classes: list folder, CSV file (``video,label,split``), class list.
        num_frames / stride / crop_size: training clip (16 frames every 4th frame, 224 crops).
        scale_range: short-side jitter ``[lo, hi]`` (default from the crop size, as pretraining).
        hflip: flip probability; null = ``dataset.json`` beside the lists' parent folder
            ("hflip": false -> 0), else 0.5.
        cache_frames / cache_short_side / cache_max_gb: decode every video once into memory.
        workers: DataLoader workers per process.
        max_failure_ratio: stop when more than this fraction of training videos fail to decode.
    """

    dataset: Literal["ucf101", "hmdb51", "ucf-layout", "csv"] = "ucf101"
    split: int = 1
    video_root: str | None = None
    split_dir: str | None = None
    csv: str | None = None
    classes: str | None = None
    num_frames: int = 16
    stride: int = 4
    crop_size: int = 224
    scale_range: list[int] | None = None
    hflip: float | None = None
    cache_frames: bool = False
    cache_short_side: int | None = None
    cache_max_gb: float = 8.0
    workers: int = 4
    max_failure_ratio: float = 0.05


@dataclass
class ClassifierConfig:
    """Where the weights start, and the classifier.

    Attributes:
        init: "random" (the baseline every table needs), a cpd export folder / ``.safetensors``
            / training checkpoint (``.pt``), or an official CPD-Video checkpoint (pretraining:
            its ``visual_encoder``; finetuning: its weights). The classifier is always new.
        arch / base_width / shortcut / temporal_stages: the architecture for ``init: random``
            (temporal_stages default [3, 4], slow-only); with a checkpoint
            they come from it (a value given here must then agree).
        dropout: dropout before the classifier (0.8 in the paper's finetuning).
    """

    init: str = "random"
    arch: str | None = None
    base_width: int | None = None
    shortcut: Literal["A", "B"] | None = None
    temporal_stages: list[int] | None = None
    dropout: float = 0.8


@dataclass
class FinetuneOptimConfig:
    """SGD of the trainable parameters (``batch_size`` is the total over all processes)."""

    batch_size: int = 128
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    no_decay_norm_bias: bool = False  # the official code decays BatchNorm parameters too
    clip_norm: float = 0.0
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    sync_bn: bool | None = None


@dataclass
class FinetuneScheduleConfig:
    """Epochs and the lr schedule.

    Attributes:
        kind: "plateau" (ReduceLROnPlateau, mode max, on the validation accuracy after each
            validation; the paper's), "step" or "cosine" (pure functions of the epoch).
        patience / factor / min_lr: the plateau schedule (5, 0.1).
        milestones / gamma / warmup_epochs: step / cosine schedules.
    """

    epochs: int = 100
    kind: Literal["plateau", "step", "cosine"] = "plateau"
    patience: int = 5
    factor: float = 0.1
    min_lr: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: float = 0.0


@dataclass
class ValConfig:
    """Validation each ``run.val_every`` epochs: clip-level accuracy of the centre clip.

    Attributes:
        subset: "test" (the official code validates on the test split) or "train".
        max_videos: evaluate at most this many, evenly spaced (0 = all): a cheaper estimate.
    """

    subset: Literal["test", "train"] = "test"
    max_videos: int = 0


@dataclass
class TestConfig:
    """The final multi-view test on the test split (scores: mean of the views' softmax).

    Attributes:
        enabled: run it at the end.
        num_clips / num_crops: views per video (10 x 3, the paper).
        crop_size: short-side resize and crop size (null = ``data.crop_size``).
        scores: "softmax" (mean of view probabilities) or "logits".
        batch_size: videos per loader batch (one video's views go through the model at once).
    """

    enabled: bool = True
    num_clips: int = 10
    num_crops: int = 3
    crop_size: int | None = None
    scores: Literal["softmax", "logits"] = "softmax"
    batch_size: int = 4


@dataclass
class ProbeConfig:
    """``mode: linear_features``: a linear classifier on features extracted once.

    Attributes:
        clips_per_video: augmented training clips per video (features of each are samples).
        solver: "lbfgs" (full-batch L-BFGS, deterministic) or "sgd" (mini-batch, uses
            ``optim.lr`` / ``optim.momentum`` and ``schedule.epochs`` as a cosine schedule).
        weight_decay: L2 penalty on the classifier weights (on standardised features).
        max_iter: L-BFGS iterations.
        test_average: "scores" (each view classified, softmax averaged: the finetuning test's
            protocol) or "features" (features averaged over views, then classified).
    """

    clips_per_video: int = 1
    solver: Literal["lbfgs", "sgd"] = "lbfgs"
    weight_decay: float = 1e-4
    max_iter: int = 500
    test_average: Literal["scores", "features"] = "scores"


@dataclass
class FinetuneRunConfig(RunConfig):
    """As :class:`cpd.train.config.RunConfig`; validation every epoch by default."""

    out: str = "runs/finetune"
    val_every: int = 1
    save_every: int = 10


@dataclass
class FinetuneConfig:
    """Everything ``cpd finetune`` needs; see the module docstring."""

    mode: Literal["finetune", "linear", "linear_features"] = "finetune"
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    schedule: FinetuneScheduleConfig = field(default_factory=FinetuneScheduleConfig)
    val: ValConfig = field(default_factory=ValConfig)
    test: TestConfig = field(default_factory=TestConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    run: FinetuneRunConfig = field(default_factory=FinetuneRunConfig)


def load_finetune_config(
    config: str | None = None, overrides: list[str] | None = None
) -> FinetuneConfig:
    """Defaults, then the YAML file or preset ``config``, then ``key=value`` ``overrides``."""
    path = find_preset(config) if config else None
    cfg = load_config(FinetuneConfig, path, overrides)
    check_config(cfg)
    return cfg


def check_config(cfg: FinetuneConfig) -> None:
    """Reject values that cannot work, naming the key (world-size checks come at run time)."""
    positive = {
        "data.num_frames": cfg.data.num_frames,
        "data.stride": cfg.data.stride,
        "data.crop_size": cfg.data.crop_size,
        "optim.batch_size": cfg.optim.batch_size,
        "schedule.epochs": cfg.schedule.epochs,
        "test.num_clips": cfg.test.num_clips,
        "test.num_crops": cfg.test.num_crops,
        "test.batch_size": cfg.test.batch_size,
        "probe.clips_per_video": cfg.probe.clips_per_video,
        "probe.max_iter": cfg.probe.max_iter,
        "run.log_every": cfg.run.log_every,
        "run.max_bad_steps": cfg.run.max_bad_steps,
    }
    check_common(positive, cfg.data.scale_range, cfg.data.hflip, cfg.run.resume)
    if cfg.data.split not in (1, 2, 3):
        raise ConfigError(f"data.split: 1, 2 or 3, got {cfg.data.split}")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"model.dropout: in [0, 1), got {cfg.model.dropout}")
    if not cfg.model.init:
        raise ConfigError("model.init: 'random' or a checkpoint / export path")
    if cfg.schedule.kind == "plateau" and cfg.run.val_every <= 0 and cfg.mode != "linear_features":
        raise ConfigError(
            "schedule.kind=plateau steps on validation accuracy: set run.val_every >= 1 "
            "(or use schedule.kind=step / cosine)"
        )
    if cfg.val.max_videos < 0:
        raise ConfigError(f"val.max_videos: >= 0, got {cfg.val.max_videos}")
