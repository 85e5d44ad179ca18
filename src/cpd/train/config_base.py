"""What the pretraining and finetuning configurations share: the optimizer and schedule keys
both have, the ``run`` section, the checks both make, and where presets are found.

:mod:`cpd.train.config` (``cpd pretrain``) and :mod:`cpd.train.finetune_config`
(``cpd finetune``) extend :class:`OptimBase` and :class:`ScheduleBase` with their own keys and
defaults. The defaults here are pretraining's (the paper's Instagram recipe); finetuning
overrides those that differ. A key redeclared in a subclass keeps its place in the printed
config; the subclass's new keys follow the shared ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cpd.config import ConfigError
from cpd.train.schedule import cosine_lr, step_lr

__all__ = ["OptimBase", "RunConfig", "ScheduleBase", "check_common", "find_preset"]


@dataclass
class OptimBase:
    """The optimizer and the step.

    Attributes:
        batch_size: TOTAL batch over all processes (each takes batch_size / world_size).
        lr / momentum / weight_decay / nesterov: SGD (the trained parameters' base lr).
        no_decay_norm_bias: no weight decay on BatchNorm weights and biases (1-D parameters).
        clip_norm: clip the global gradient norm at this (0 = off; 20 is the official
            ``--clip_gradient`` default).
        amp: "auto" (bf16 on CUDA / CPUs with native bf16, else fp32), "none", "bf16", "fp16".
        channels_last: channels-last 3D memory format for the video model.
        sync_bn: false (the official recipes): every process normalises its own batch; true:
            convert BatchNorm to SyncBatchNorm under DDP (CUDA only: gloo has none); null: on
            for CUDA with several processes (where BatchNorm trains).
    """

    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    no_decay_norm_bias: bool = True
    clip_norm: float = 20.0
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    sync_bn: bool | None = False


@dataclass
class ScheduleBase:
    """Epochs and the learning-rate decay (pure functions of the epoch).

    Attributes:
        epochs: total epochs.
        kind: "step" (x gamma at each milestone) or "cosine".
        milestones / gamma: multi-step decay (0-based epochs: a milestone m first applies to
            epoch m, the official epoch m + 1, as the official decay after its epoch m does).
        warmup_epochs: linear warmup (fractional epochs allowed).
    """

    epochs: int = 300
    kind: Literal["step", "cosine"] = "step"
    milestones: list[int] = field(default_factory=lambda: [100, 201, 250])
    gamma: float = 0.1
    warmup_epochs: float = 0.0

    def lr_factor(self, epoch_float: float, final_lr: float = 0.0) -> float:
        """The step / cosine multiplier of the base lr at a (fractional) epoch; a cosine ends
        at ``final_lr`` (a fraction of the base lr)."""
        if self.kind == "cosine":
            return cosine_lr(1.0, epoch_float, self.epochs, self.warmup_epochs, final_lr)
        return step_lr(1.0, epoch_float, self.milestones, self.gamma, self.warmup_epochs)


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


def check_common(cfg: Any, positive: dict[str, int]) -> None:
    """Checks both trainers make, naming the key: the counts in ``positive`` and the shared
    ones >= 1, the clip settings, ``run.resume``."""
    positive = {
        "data.num_frames": cfg.data.num_frames,
        "data.stride": cfg.data.stride,
        "data.crop_size": cfg.data.crop_size,
        "optim.batch_size": cfg.optim.batch_size,
        "schedule.epochs": cfg.schedule.epochs,
        "run.log_every": cfg.run.log_every,
        "run.max_bad_steps": cfg.run.max_bad_steps,
        **positive,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}")
    scale_range, hflip, resume = cfg.data.scale_range, cfg.data.hflip, cfg.run.resume
    if scale_range is not None and len(scale_range) != 2:
        raise ConfigError(f"data.scale_range: expected [lo, hi], got {scale_range}")
    if hflip is not None and not 0.0 <= hflip <= 1.0:
        raise ConfigError(f"data.hflip: a probability in [0, 1], got {hflip}")
    if resume not in ("auto", "never") and not Path(resume).suffix:
        raise ConfigError(f"run.resume: 'auto', 'never' or a checkpoint file, got {resume}")
