"""The pretraining configuration: one typed dataclass per section, loaded from YAML.

Sections (``cpd pretrain --print-config`` shows every key with its resolved value):

* ``data``: the caption manifest, clip settings, frame cache, loader workers;
* ``model``: :class:`cpd.models.ModelConfig` (video arch and width, text encoder, heads);
* ``loss``: memory-bank NCE (the paper) or in-batch InfoNCE, negatives, temperature, hard negatives;
* ``optim``: SGD, the total batch size, gradient clipping, mixed precision, the text-encoder lr;
* ``schedule``: epochs, lr decay (multi-step or cosine), warmup, the epoch the text encoder unfreezes;
* ``run``: output directory, seed, resume, validation / checkpoint / logging periods.

Values are resolved in this order: dataclass defaults (the paper's Instagram recipe where one
exists), the YAML file given with ``--config``, then ``key=value`` overrides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from cpd.config import ConfigError, load_config
from cpd.models import ModelConfig
from cpd.train.config_base import OptimBase, RunConfig, ScheduleBase, check_common, find_preset

__all__ = [
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "PretrainConfig",
    "RunConfig",
    "ScheduleConfig",
    "find_preset",
    "load_pretrain_config",
]


@dataclass
class DataConfig:
    """Video-caption pairs and how clips are cut from them.

    Attributes:
        manifest: caption manifest (JSON Lines, CSV/TSV, Parquet, a JSON list, or the
            Instagram ``.json``); ``cpd synth OUT`` writes ``OUT/captions.jsonl``.
        video_root: directory the manifest's video paths are relative to (default: the
            manifest's folder).
        manifest_format: manifest format: null (auto: from the content and suffix) or "instagram",
            "jsonl", "json", "csv", "tsv", "parquet"; a format the content contradicts is an
            error.
        video_key: the column holding each video's path relative to ``video_root``, or a template
            over the row's columns (``"{videoid}.mp4"``, ``"{page_dir}/{videoid}.mp4"``).
        caption_key: the caption column.
        id_key: the video-id column (optional per row; a key other than "id" must exist).
        bad_rows: "error" (one error listing every bad row) or "skip" (leave bad rows out, count
            them, and write them to ``bad_rows.jsonl`` in the run directory).
        train_split / val_split: split names in the manifest (val: "" = no validation set).
        num_frames / stride / crop_size: clip shape (8 frames every 4th frame, 224 crops).
        scale_range: short-side scale jitter ``[lo, hi]`` (default: [256, 340] for 224 crops,
            [128, 170] for 112, scaled otherwise).
        hflip: horizontal-flip probability; null = the dataset's ``dataset.json`` ("hflip":
            false → 0) beside the manifest, else 0.5.
        cache_frames: decode every video once into memory (uint8) and cut clips from there.
        cache_short_side: short side of the cached frames (default: top of scale_range).
        cache_max_gb: refuse to cache more than this.
        workers: DataLoader worker processes per training process (0 = in the main process).
        max_tokens: caption tokens ([CLS]/[SEP] included).
        max_failure_ratio: stop when more than this fraction of videos fail to decode.
        group_by: a manifest column whose equal values go into the same batch (whole groups;
            the synthetic set's "group": one appearance with several motions).
        video_neighbours: batches of groups of this many pairs whose videos look alike
            (nearest still-appearance descriptors; 0 = off; see :mod:`cpd.train.neighbours`):
            ``group_by``'s effect without a metadata column.
        caption_neighbours: the same with groups of nearest captions (frozen text features).
        shards: training pairs from webdataset tar shards instead of a manifest: a directory,
            a brace pattern (``shards/{00000..00999}.tar``), a glob, or fsspec URLs
            (``s3://``, ``gs://``, ``https://``, ``file://``); video2dataset's layout reads as is.
        val_shards: validation pairs from shards (the same forms); null = no validation set
            when training from shards.
        shuffle_buffer: samples each loader worker shuffles among while streaming shards (the
            shard order is shuffled too, every epoch); each worker holds up to this many
            videos' bytes (256 x 2 MB = 0.5 GB).
    """

    manifest: str = ""
    video_root: str | None = None
    manifest_format: (
        Literal["instagram", "jsonl", "json", "csv", "tsv", "parquet", "auto"] | None
    ) = None
    video_key: str = "video"
    caption_key: str = "caption"
    id_key: str = "id"
    bad_rows: Literal["error", "skip"] = "error"
    train_split: str = "train"
    val_split: str = "val"
    num_frames: int = 8
    stride: int = 4
    crop_size: int = 224
    scale_range: list[int] | None = None
    hflip: float | None = None
    cache_frames: bool = False
    cache_short_side: int | None = None
    cache_max_gb: float = 8.0
    workers: int = 4
    max_tokens: int = 64
    max_failure_ratio: float = 0.05
    group_by: str | None = None
    video_neighbours: int = 0
    caption_neighbours: int = 0
    shards: str | None = None
    val_shards: str | None = None
    shuffle_buffer: int = 256

    #: Keys whose ``key=value`` overrides are taken as text as they are: a template such as
    #: ``{videoid}.mp4`` is not YAML (nor, alone in its braces, a string).
    TEXT_KEYS = ("video_key", "caption_key", "id_key", "shards", "val_shards")

    def manifest_options(self) -> dict[str, str]:
        """The keyword arguments of :func:`cpd.data.read_caption_manifest` that pick columns
        and the bad-row policy."""
        return {"video_key": self.video_key, "caption_key": self.caption_key,
                "id_key": self.id_key, "bad_rows": self.bad_rows}  # fmt: skip

    @classmethod
    def quote_overrides(cls, overrides: list[str], section: str = "data") -> list[str]:
        """``overrides`` with the values of :attr:`TEXT_KEYS` quoted as YAML strings (a value
        already in quotes is left alone), so that ``data.video_key={videoid}.mp4`` works."""
        out = []
        for item in overrides:
            key, sep, raw = item.partition("=")
            name = key.strip().removeprefix(f"{section}.")
            if sep and name != key.strip() and name in cls.TEXT_KEYS:
                text = raw.strip()
                quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
                if not quoted and text not in ("null", "~"):
                    item = f"{key}={json.dumps(text)}"
            out.append(item)
        return out


@dataclass
class LossConfig:
    """The contrastive loss.

    Attributes:
        kind: "nce" (CPD's memory-bank NCE) or "infonce" (in-batch, learnable temperature).
        num_negatives: K noise samples per pair (nce).
        temperature: T (nce; the initial temperature for infonce).
        learn_temperature: infonce only: learn T (CLIP) or keep it fixed.
        momentum: memory-bank momentum (nce).
        bank_dtype: bank storage "float32", "float16" or "bfloat16" (nce).
        hard_negatives: add each clip played backwards as a negative for its own caption.
        hard_shuffle: also a frame-shuffled copy.
    """

    kind: Literal["nce", "infonce"] = "nce"
    num_negatives: int = 16384
    temperature: float = 0.07
    learn_temperature: bool = True
    momentum: float = 0.5
    bank_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    hard_negatives: bool = False
    hard_shuffle: bool = False


@dataclass
class OptimConfig(OptimBase):
    """The optimizer and the step: :class:`~cpd.train.config_base.OptimBase`'s keys, then
    pretraining's own.

    Attributes:
        optimizer: "sgd" (the paper) or "adamw" (decoupled weight decay; ``momentum`` and
            ``nesterov`` unused). Adam's per-parameter step sizes let a weak but consistent
            gradient grow quickly, which is what a small model learning motion from captions on
            a small dataset needs (see ``configs/pretrain_synthetic_cpu.yaml``).
        text_lr: lr of the text encoder when it unfreezes (the official ``lr_bert * 0.1`` =
            3e-4 x 0.1 = 3e-5); ``text_lr_schedule`` says how it decays from there.
        text_lr_schedule: "from_unfreeze" (the official rule): ``text_lr`` is the text
            encoder's lr from ``schedule.unfreeze_epoch`` on, decayed only by the milestones
            from then on (those >= unfreeze_epoch - 1, as the official code counts them): the
            paper's run gives 3e-5 from epoch 150, 3e-6 from 201, 3e-7 from 250, never the
            decay at 100. With ``schedule.kind=cosine`` it follows the rest of the main lr's
            cosine, rescaled to run from ``text_lr`` at the unfreeze to ``final_lr * text_lr``
            at the end. "global" (cpd's earlier default): ``text_lr`` times the main lr's schedule
            factor at every epoch, decays before the unfreeze included (3e-6 / 3e-7 / 3e-8).
        cache_text_features: while the text encoder is frozen (stage I), cache its pooled
            features, N x hidden fp16 per process (10M captions x 768: 15.4 GB); false runs the
            frozen encoder on every step's captions instead, for corpora whose cache does not
            fit in memory.

    ``sync_bn`` false (the default) covers the text head's BatchNorm1d too: 32 clips per GPU
    in the paper's 8 x 32; null was cpd's earlier default.
    """

    optimizer: Literal["sgd", "adamw"] = "sgd"
    text_lr: float = 3e-5
    text_lr_schedule: Literal["from_unfreeze", "global"] = "from_unfreeze"
    cache_text_features: bool = True


@dataclass
class ScheduleConfig(ScheduleBase):
    """Epochs, lr decay and the text-encoder curriculum (pure functions of the epoch):
    :class:`~cpd.train.config_base.ScheduleBase`'s keys, then pretraining's own.

    The text encoder takes only the milestones from its unfreeze on
    (``optim.text_lr_schedule``).

    Attributes:
        final_lr: cosine end value (as a fraction of the base lr).
        unfreeze_epoch: the text encoder trains from this epoch on (null = frozen throughout);
            the official ``ft_bert_ep`` (its encoder gets gradients from its epoch
            ``ft_bert_ep + 1``, our epoch ``ft_bert_ep``).
    """

    final_lr: float = 0.0
    unfreeze_epoch: int | None = 150


@dataclass
class PretrainConfig:
    """Everything ``cpd pretrain`` needs; see the module docstring."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(arch="r3d50"))
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    #: keys renamed in this release (old -> new): read under their old names with a warning
    RENAMED = {"data.root": "data.video_root", "data.format": "data.manifest_format"}


def load_pretrain_config(
    config: str | None = None, overrides: list[str] | None = None
) -> PretrainConfig:
    """Defaults, then the YAML file or preset ``config``, then ``key=value`` ``overrides``."""
    path = find_preset(config) if config else None
    cfg = load_config(PretrainConfig, path, DataConfig.quote_overrides(overrides or []))
    check_config(cfg)
    return cfg


def check_config(cfg: PretrainConfig) -> None:
    """Reject values that cannot work, naming the key (world-size checks come at run time)."""
    check_common(cfg, {"data.shuffle_buffer": cfg.data.shuffle_buffer})
    for key in ("video_neighbours", "caption_neighbours"):
        if getattr(cfg.data, key) < 0:
            raise ConfigError(f"data.{key}: a group size >= 2, or 0 (off), got "
                              f"{getattr(cfg.data, key)}")  # fmt: skip
    if cfg.model.num_classes != 0:
        raise ConfigError("model.num_classes: must be 0 for pretraining (the two-tower model)")
    if cfg.loss.num_negatives < 1:
        raise ConfigError(f"loss.num_negatives: must be >= 1, got {cfg.loss.num_negatives}")
