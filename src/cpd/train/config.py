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
from pathlib import Path
from typing import Literal

from cpd.config import ConfigError, load_config
from cpd.models import ModelConfig

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
        root: directory the manifest's video paths are relative to (default: the manifest's).
        format: manifest format: null (auto: from the content and suffix) or "instagram",
            "jsonl", "json", "csv", "tsv", "parquet"; a format the content contradicts is an
            error.
        video_key: the column holding each video's path relative to ``root``, or a template
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
    root: str | None = None
    format: Literal["instagram", "jsonl", "json", "csv", "tsv", "parquet", "auto"] | None = None
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
class OptimConfig:
    """The optimizer and the step.

    Attributes:
        batch_size: TOTAL batch over all processes (each takes batch_size / world_size).
        optimizer: "sgd" (the paper) or "adamw" (decoupled weight decay; ``momentum`` and
            ``nesterov`` unused). Adam's per-parameter step sizes let a weak but consistent
            gradient grow quickly, which is what a small model learning motion from captions on
            a small dataset needs (see ``configs/pretrain_synthetic_cpu.yaml``).
        lr / momentum / weight_decay / nesterov: the video side and the heads.
        no_decay_norm_bias: no weight decay on BatchNorm weights and biases (1-D parameters).
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
        clip_norm: clip the global gradient norm at this (0 = off).
        amp: "auto" (bf16 on CUDA / CPUs with native bf16, else fp32), "none", "bf16", "fp16".
        channels_last: channels-last 3D memory format for the video tower.
        sync_bn: false (the official recipe): every process normalises its own batch (32 clips
            per GPU in the paper's 8 x 32), the text head's BatchNorm1d included; true:
            convert BatchNorm to SyncBatchNorm under DDP (CUDA only: gloo has none); null: on
            for CUDA with several processes (cpd's earlier default).
        cache_text_features: while the text encoder is frozen (stage I), cache its pooled
            features, N x hidden fp16 per process (10M captions x 768: 15.4 GB); false runs the
            frozen encoder on every step's captions instead, for corpora whose cache does not
            fit in memory.
    """

    batch_size: int = 256
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    no_decay_norm_bias: bool = True
    text_lr: float = 3e-5
    text_lr_schedule: Literal["from_unfreeze", "global"] = "from_unfreeze"
    clip_norm: float = 20.0
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    sync_bn: bool | None = False
    cache_text_features: bool = True


@dataclass
class ScheduleConfig:
    """Epochs, learning-rate decay and the text-encoder curriculum (pure functions of the epoch).

    Attributes:
        epochs: total epochs.
        kind: "step" (x gamma at each milestone) or "cosine".
        milestones / gamma: multi-step decay (0-based epochs: a milestone m first applies to
            epoch m, the official epoch m + 1, as the official decay after its epoch m does).
            The text encoder takes only the later ones (``optim.text_lr_schedule``).
        warmup_epochs: linear warmup (fractional epochs allowed).
        final_lr: cosine end value (as a fraction of the base lr).
        unfreeze_epoch: the text encoder trains from this epoch on (null = frozen throughout);
            the official ``ft_bert_ep`` (its encoder gets gradients from its epoch
            ``ft_bert_ep + 1``, our epoch ``ft_bert_ep``).
    """

    epochs: int = 300
    kind: Literal["step", "cosine"] = "step"
    milestones: list[int] = field(default_factory=lambda: [100, 201, 250])
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    final_lr: float = 0.0
    unfreeze_epoch: int | None = 150


@dataclass
class RunConfig:
    """Where and how the run goes.

    Attributes:
        out: run directory (config.yaml, metrics.jsonl, checkpoints, TensorBoard, export/).
        seed: every random draw derives from it (with epoch, step, index, rank).
        resume: "auto" = continue from the run directory's latest readable checkpoint if any;
            "never" = refuse a run directory that has checkpoints; or a checkpoint path.
        device: "auto" (CUDA if available), "cpu", "cuda".
        val_every: validate every N epochs and after the last (0 = never).
        save_every: also keep ``epoch_NNNN.pt`` every N epochs (``last.pt`` is written every epoch).
        log_every: write a metrics.jsonl line every N steps.
        max_bad_steps: stop after this many non-finite (skipped) steps in a row.
        progress: tqdm progress bar on the main process.
        tensorboard: write TensorBoard event files.
        threads: torch CPU threads per process (0 = torch's default).
    """

    out: str = "runs/pretrain"
    seed: int = 0
    resume: str = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    val_every: int = 10
    save_every: int = 50
    log_every: int = 10
    max_bad_steps: int = 5
    progress: bool = True
    tensorboard: bool = True
    threads: int = 0


@dataclass
class PretrainConfig:
    """Everything ``cpd pretrain`` needs; see the module docstring."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(arch="r3d50"))
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _preset_dirs() -> list[Path]:
    here = Path(__file__).resolve()
    # the installed package data first, then the source checkout's top-level configs/
    return [here.parents[1] / "configs", here.parents[3] / "configs"]


def find_preset(name_or_path: str) -> Path:
    """A config file path, or a preset name (``pretrain_synthetic_cpu``) from ``configs/``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    for folder in _preset_dirs():
        if (folder / stem).is_file():
            return folder / stem
    known = sorted({p.stem for d in _preset_dirs() if d.is_dir() for p in d.glob("*.yaml")})
    raise ConfigError(
        f"config {name_or_path!r}: no such file, nor a preset (presets: {', '.join(known)})"
    )


def load_pretrain_config(
    config: str | None = None, overrides: list[str] | None = None
) -> PretrainConfig:
    """Defaults, then the YAML file or preset ``config``, then ``key=value`` ``overrides``."""
    path = find_preset(config) if config else None
    cfg = load_config(PretrainConfig, path, DataConfig.quote_overrides(overrides or []))
    check_config(cfg)
    return cfg


def check_common(positive: dict[str, int], scale_range: list[int] | None, hflip: float | None,
                 resume: str) -> None:  # fmt: skip
    """Checks both trainers make: counts >= 1, clip settings, ``run.resume``; names the key."""
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}")
    if scale_range is not None and len(scale_range) != 2:
        raise ConfigError(f"data.scale_range: expected [lo, hi], got {scale_range}")
    if hflip is not None and not 0.0 <= hflip <= 1.0:
        raise ConfigError(f"data.hflip: a probability in [0, 1], got {hflip}")
    if resume not in ("auto", "never") and not Path(resume).suffix:
        raise ConfigError(f"run.resume: 'auto', 'never' or a checkpoint file, got {resume}")


def check_config(cfg: PretrainConfig) -> None:
    """Reject values that cannot work, naming the key (world-size checks come at run time)."""
    positive = {
        "data.num_frames": cfg.data.num_frames,
        "data.stride": cfg.data.stride,
        "data.crop_size": cfg.data.crop_size,
        "data.shuffle_buffer": cfg.data.shuffle_buffer,
        "optim.batch_size": cfg.optim.batch_size,
        "schedule.epochs": cfg.schedule.epochs,
        "run.log_every": cfg.run.log_every,
        "run.max_bad_steps": cfg.run.max_bad_steps,
    }
    check_common(positive, cfg.data.scale_range, cfg.data.hflip, cfg.run.resume)
    if cfg.model.num_classes != 0:
        raise ConfigError("model.num_classes: must be 0 for pretraining (the two-tower model)")
    if cfg.loss.num_negatives < 1:
        raise ConfigError(f"loss.num_negatives: must be >= 1, got {cfg.loss.num_negatives}")
