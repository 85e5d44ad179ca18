"""The finetuning / linear-probe configuration: typed sections loaded from YAML.

Sections (``cpd finetune --print-config`` shows every key with its resolved value):

* ``data``: the labelled dataset (UCF101, HMDB51, a UCF-layout folder, a CSV), split, clip shape,
  frame cache;
* ``model``: where the encoder starts (``init``: a cpd export / checkpoint, an official CPD
  checkpoint, or ``random``), the architecture for random starts, the classifier's dropout,
  and which stages train (``train_from``, the official ``--ft_begin_index``);
* ``mode``, one protocol each:

  - ``finetune``: the paper's finetuning (everything trains, or the stages from
    ``model.train_from`` on);
  - ``linear_official``: the official code's "linear" protocol (``--ft_begin_index 5``): only
    ``fc`` trains, but the encoder runs in TRAIN mode, so its BatchNorm layers normalise with
    batch statistics and re-estimate their running statistics, and dropout (0.8) is on;
    ``optim.lr`` defaults to 2 (the official README: "2 or 20"). This is the protocol behind
    the paper's "frozen" numbers (UCF101 83.7, HMDB51 54.7);
  - ``linear``: cpd's linear probe, a strictly frozen encoder: the encoder is in EVAL mode
    (running statistics used and never changed) and only ``fc`` (and the dropout before it)
    trains, on clips. Better defined than the official protocol, but not the paper's;
  - ``linear_features``: the protocol of ``linear`` computed fast (features extracted once,
    a linear classifier fitted on them: see :mod:`cpd.train.probe`);
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
from cpd.train.config_base import OptimBase, RunConfig, ScheduleBase, check_common, find_preset

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
    "first_trained_stage",
    "load_finetune_config",
    "resolved_lr",
]


@dataclass
class FinetuneDataConfig:
    """The labelled videos and how training clips are cut.

    Attributes:
        dataset: "ucf101" / "hmdb51" (the packaged official splits over ``video_root``, or the
            datasets' own list files in ``split_dir``), "ucf-layout" (UCF101-style lists in
            ``split_dir``, e.g. ``cpd synth``'s ``OUT/ucfTrainTestlist``), "csv".
        fold: official split number 1..3 (UCF101 / HMDB51's split 1, 2, 3).
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
    fold: int = 1
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
        dropout: dropout before the classifier (0.8 in the paper's finetuning and in the
            official linear protocol).
        train_from: the first stage that trains, as the official ``--ft_begin_index``
            (``get_fine_tuning_parameters`` in its ``models/resnet.py``): 0 (default, as
            official) = every parameter; k in 1..4 = ``layer{k}`` .. ``layer4`` and ``fc``;
            5 = ``fc`` only. The other parameters (the stem ``conv1`` / ``bn1`` and the
            earlier layers) get ``requires_grad`` off and are left out of the optimizer (no
            update, no weight decay); the trained ones all share ``optim.lr`` (the official
            function's ``lr`` argument is unused). In ``mode: finetune`` the frozen stages'
            BatchNorm layers still run in train mode and re-estimate their running statistics,
            as in the official code. The ``linear*`` modes imply 5 (0 or 5 accepted there).
    """

    init: str = "random"
    arch: str | None = None
    base_width: int | None = None
    shortcut: Literal["A", "B"] | None = None
    temporal_stages: list[int] | None = None
    dropout: float = 0.8
    train_from: int = 0


# optim.lr when null: the official README's finetuning lr, and its linear-probe lr ("change
# the learning rate to 2 or 20"; 2 here) for mode linear_official.
FINETUNE_LR = 0.02
OFFICIAL_LINEAR_LR = 2.0


@dataclass
class FinetuneOptimConfig(OptimBase):
    """SGD of the trainable parameters (:class:`~cpd.train.config_base.OptimBase`'s keys).

    ``lr``: null = the mode's default (0.02 for ``finetune`` / ``linear`` / ``linear_features``,
    2.0 for ``linear_official``), filled in when the config is loaded. ``sync_bn``: false =
    per-process BatchNorm, as the official finetuning (16 clips per GPU).
    """

    batch_size: int = 128
    lr: float | None = None  # type: ignore[assignment]
    no_decay_norm_bias: bool = False  # the official code decays BatchNorm parameters too


@dataclass
class FinetuneScheduleConfig(ScheduleBase):
    """Epochs and the lr schedule (:class:`~cpd.train.config_base.ScheduleBase`'s keys, then
    the plateau schedule's).

    Attributes:
        kind: "plateau" (ReduceLROnPlateau, mode max, on the validation accuracy after each
            validation; the paper's), "step" or "cosine" (pure functions of the epoch).
        patience / factor / min_lr: the plateau schedule (5, 0.1, and the lr never below
            1e-6, as the official ``ReduceLROnPlateau(..., min_lr=1e-6)``).
    """

    epochs: int = 100
    kind: Literal["plateau", "step", "cosine"] = "plateau"  # type: ignore[assignment]
    milestones: list[int] = field(default_factory=list)
    patience: int = 5
    factor: float = 0.1
    min_lr: float = 1e-6


@dataclass
class ValConfig:
    """Validation each ``run.val_every`` epochs: clip-level accuracy of one clip per video.

    Attributes:
        split: "test" (the official code validates on the test split) or "train".
        max_videos: evaluate at most this many, evenly spaced (0 = all): a cheaper estimate.
        clip: "random" (default, the official validation): one training-style clip per video,
            a random window, short side jittered in ``data.scale_range`` and a random crop, no
            flip, drawn from (``run.seed``, epoch, video index), so it changes every epoch
            and repeats in a resumed run; "centre": the centre window, short side resized to
            the crop size, the centre crop (the same clip every epoch: a less noisy signal
            for the plateau schedule, but not the official one).
    """

    split: Literal["test", "train"] = "test"
    max_videos: int = 0
    clip: Literal["random", "centre"] = "random"


@dataclass
class TestConfig:
    """The final multi-view test on the test split (scores: mean of the views' raw logits, as
    the official test.py).

    Attributes:
        enabled: run it at the end.
        num_clips / num_crops: views per video (10 x 3, the paper).
        crop_size: short-side resize and crop size (null = ``data.crop_size``).
        scores: "logits" (mean of the views' raw logits, the official) or "softmax" (mean of
            view probabilities).
        batch_size: videos per loader batch (one video's views go through the model at once).
    """

    enabled: bool = True
    num_clips: int = 10
    num_crops: int = 3
    crop_size: int | None = None
    scores: Literal["softmax", "logits"] = "logits"
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
        test_average: "scores" (each view classified, the scores averaged as ``test.scores``
            says: the finetuning test's protocol) or "features" (features averaged over views,
            then classified).
    """

    clips_per_video: int = 1
    solver: Literal["lbfgs", "sgd"] = "lbfgs"
    weight_decay: float = 1e-4
    max_iter: int = 500
    test_average: Literal["scores", "features"] = "scores"


@dataclass
class FinetuneRunConfig(RunConfig):
    """As :class:`cpd.train.config_base.RunConfig`; validation every epoch by default."""

    out: str = "runs/finetune"
    val_every: int = 1
    save_every: int = 10


@dataclass
class FinetuneConfig:
    """Everything ``cpd finetune`` needs; see the module docstring (``mode``: one protocol each)."""

    mode: Literal["finetune", "linear_official", "linear", "linear_features"] = "finetune"
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    schedule: FinetuneScheduleConfig = field(default_factory=FinetuneScheduleConfig)
    val: ValConfig = field(default_factory=ValConfig)
    test: TestConfig = field(default_factory=TestConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    run: FinetuneRunConfig = field(default_factory=FinetuneRunConfig)

    #: keys renamed in this release (old -> new): read under their old names with a warning
    RENAMED = {"data.split": "data.fold", "val.subset": "val.split"}


def load_finetune_config(
    config: str | None = None, overrides: list[str] | None = None
) -> FinetuneConfig:
    """Defaults, then the YAML file or preset ``config``, then ``key=value`` ``overrides``."""
    path = find_preset(config) if config else None
    cfg = load_config(FinetuneConfig, path, overrides)
    cfg.optim.lr = resolved_lr(cfg)
    check_config(cfg)
    return cfg


def resolved_lr(cfg: FinetuneConfig) -> float:
    """``optim.lr``, or the mode's default when it is null (see :class:`FinetuneOptimConfig`)."""
    if cfg.optim.lr is not None:
        return cfg.optim.lr
    return OFFICIAL_LINEAR_LR if cfg.mode == "linear_official" else FINETUNE_LR


def first_trained_stage(cfg: FinetuneConfig) -> int:
    """The first stage that trains: ``model.train_from`` when finetuning, 5 (``fc``) else."""
    return cfg.model.train_from if cfg.mode == "finetune" else 5


def check_config(cfg: FinetuneConfig) -> None:
    """Reject values that cannot work, naming the key (world-size checks come at run time)."""
    positive = {
        "test.num_clips": cfg.test.num_clips,
        "test.num_crops": cfg.test.num_crops,
        "test.batch_size": cfg.test.batch_size,
        "probe.clips_per_video": cfg.probe.clips_per_video,
        "probe.max_iter": cfg.probe.max_iter,
    }
    check_common(cfg, positive)
    if cfg.data.fold not in (1, 2, 3):
        raise ConfigError(f"data.fold: 1, 2 or 3, got {cfg.data.fold}")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"model.dropout: in [0, 1), got {cfg.model.dropout}")
    if not cfg.model.init:
        raise ConfigError("model.init: 'random' or a checkpoint / export path")
    if not 0 <= cfg.model.train_from <= 5:
        raise ConfigError(f"model.train_from: 0..5 (the official --ft_begin_index), got "
                          f"{cfg.model.train_from}")  # fmt: skip
    if cfg.mode != "finetune" and cfg.model.train_from not in (0, 5):
        raise ConfigError(f"model.train_from={cfg.model.train_from}: mode={cfg.mode} trains "
                          "only fc (train_from 5); partial finetuning needs mode=finetune")  # fmt: skip
    if cfg.schedule.kind == "plateau" and cfg.run.val_every <= 0 and cfg.mode != "linear_features":
        raise ConfigError(
            "schedule.kind=plateau steps on validation accuracy: set run.val_every >= 1 "
            "(or use schedule.kind=step / cosine)"
        )
    if cfg.val.max_videos < 0:
        raise ConfigError(f"val.max_videos: >= 0, got {cfg.val.max_videos}")
