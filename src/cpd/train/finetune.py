"""Finetuning and linear probes of the video encoder on labelled actions (``cpd finetune``).

Read top to bottom: :func:`finetune` sets up the process (group) and run directory exactly as
pretraining does (:func:`cpd.train.run.open_run`), then builds the data (:func:`build_data`)
and the classifier (:func:`build_classifier`: the encoder of ``model.init`` with a new ``fc``),
runs the epochs in pretraining's loop (:class:`cpd.train.trainer.BaseTrainer`, one
:func:`finetune_step` per batch), validates (clip accuracy of one clip per video,
:func:`evaluate_clips`: by default a random training-style clip drawn from (seed, epoch, index)
as the official code validates, or the centre clip with ``val.clip: centre``) and steps
ReduceLROnPlateau on it, checkpoints every epoch, and finishes with the multi-view test
(:func:`multiview_test`, the ``cpd test`` machinery), ``results.json``, a printed table and
``export/``. ``mode: linear_features`` branches to :func:`cpd.train.probe.linear_probe` after
the common setup.

The modes are protocols (see :mod:`cpd.train.finetune_config`): ``finetune`` trains
everything, or the stages from ``model.train_from`` on (the official ``--ft_begin_index``; the
others are frozen and left out of the optimizer). ``linear_official`` is the official code's
linear protocol (``--ft_begin_index 5``, lr 2 or 20): only ``fc`` trains, but the encoder
runs in train mode, so BatchNorm normalises with batch statistics and re-estimates its
running statistics, with dropout 0.8. ``linear`` is cpd's stricter probe: the encoder frozen
in EVAL mode, its BatchNorm statistics never change and nothing inside it is random; only
``fc`` (and the dropout before it, ``model.dropout``) trains.

Checkpoints hold ``{"model", "config": {"model": ModelConfig}, "finetune": <this run's config>,
"optimizer", "scheduler", "scaler", "epoch", "step_in_epoch", "global_step", "rng", ...}`` so
``cpd test RUN/last.pt`` and :func:`cpd.load_model` read them directly. Reproducibility is as
in pretraining: data order, clips and dropout derive from (seed, epoch, step, index, rank), so a
run resumed mid-epoch repeats the uninterrupted run's steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from cpd.config import ConfigError, from_dict, to_dict
from cpd.errors import CheckpointError
from cpd.models import ResNet3d
from cpd.train.amp import make_scaler, resolve_amp
from cpd.train.finetune_build import (
    FinetuneData,
    build_classifier,
    build_data,
    build_optimizer,
    freeze_stages,
    set_train_mode,
)
from cpd.train.finetune_config import FinetuneConfig, first_trained_stage
from cpd.train.finetune_eval import evaluate_clips, multiview_test, report, test_metrics
from cpd.train.loader import make_loader
from cpd.train.log import RunLogger
from cpd.train.probe import linear_probe
from cpd.train.run import Env, open_run
from cpd.train.step import StepResult, finetune_step
from cpd.train.trainer import BaseTrainer, per_rank_batch, use_sync_bn

__all__ = [
    "FinetuneData",
    "Trainer",
    "build_classifier",
    "build_data",
    "evaluate_clips",
    "finetune",
    "finetune_step",
    "multiview_test",
    "set_train_mode",
]

log = logging.getLogger(__name__)

BN_TRAINS = ("finetune", "linear_official")  # modes whose BatchNorm layers run in train mode


# --- the trainer --------------------------------------------------------------------------


@dataclass(kw_only=True)
class Trainer(BaseTrainer):
    """A finetuning / linear run: the shared loop (:class:`~cpd.train.trainer.BaseTrainer`)
    with the cross-entropy step, clip validation and the plateau schedule."""

    command: ClassVar[str] = "finetune"
    dropout_stream: ClassVar[int] = 2
    extra_sums: ClassVar[tuple[str, ...]] = ("correct", "clips")
    validate_before_save: ClassVar[bool] = True  # the plateau state is part of the epoch

    cfg: FinetuneConfig
    data: FinetuneData
    model: ResNet3d
    scheduler: Any  # ReduceLROnPlateau or None

    # checkpoints: the shared part in BaseTrainer -----------------------------------------

    def extra_state(self) -> dict[str, Any]:
        """``config.model`` makes the file loadable by load_model; plus the lr scheduler."""
        return {
            "config": {"model": self.model.config.to_dict()},
            "finetune": to_dict(self.cfg),
            "classes": list(self.data.classes),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "last_val": dict(self.last_val),
        }

    def check_resume(self, path: Path, ckpt: dict[str, Any]) -> None:
        """Mode and model settings must be this run's."""
        old = ckpt.get("finetune")
        if old is not None:
            prev = from_dict(FinetuneConfig, old)
            if (prev.mode, to_dict(prev.model)) != (self.cfg.mode, to_dict(self.cfg.model)):
                raise CheckpointError(f"{path}: its mode / model settings differ from this run's")

    def load_extra(self, ckpt: dict[str, Any]) -> None:
        """The lr scheduler and the last validation."""
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.last_val = dict(ckpt.get("last_val") or {})

    # the loop's steps ----------------------------------------------------------------------

    def begin_epoch(self) -> None:
        """The mode's train / eval modes (``linear``: only the head in train mode)."""
        set_train_mode(self.model, self.cfg.mode)

    def train_loader(self) -> Iterable[dict[str, Any]]:
        """The current epoch's rest."""
        return make_loader(self.data.train, **self.loader_options())  # type: ignore[arg-type]

    def set_step_lr(self, epoch_float: float) -> float:
        """The step / cosine schedule's lr; the plateau schedule sets it after validation."""
        if self.cfg.schedule.kind != "plateau":
            for g in self.optimizer.param_groups:
                g["lr"] = g["base_lr"] * self.cfg.schedule.lr_factor(epoch_float)
        return self.optimizer.param_groups[0]["lr"]

    def step(self, batch: dict[str, Any], index: int) -> tuple[StepResult, dict[str, float]]:
        """:func:`~cpd.train.step.finetune_step`; counts the clips and the correct ones."""
        o = self.cfg.optim
        fmt = torch.channels_last_3d if o.channels_last else torch.contiguous_format
        result, correct = finetune_step(self.wrapped, self.optimizer, batch,
                                        amp_dtype=self.amp_dtype, scaler=self.scaler,
                                        clip_norm=o.clip_norm, memory_format=fmt)  # fmt: skip
        return result, {"correct": correct, "clips": float(batch["video"].shape[0])}

    def epoch_figures(self, sums: dict[str, float]) -> dict[str, Any]:
        """Training clip accuracy and the lr."""
        return {"clip_top1": sums["correct"] / max(sums["clips"], 1.0),
                "lr": self.optimizer.param_groups[0]["lr"]}  # fmt: skip

    def validate(self) -> None:
        """Clip accuracy (``val.clip``: a random clip of this epoch, or the centre clip); steps
        the plateau schedule on its top-1."""
        cfg, epoch = self.cfg, self.epoch
        if not self.validation_due():
            return
        metrics = evaluate_clips(self.model, self.data.val, self.env,
                                 batch_size=self.batch_per_rank, workers=cfg.data.workers,
                                 amp_dtype=self.amp_dtype, epoch=epoch)  # fmt: skip
        if self.scheduler is not None:
            self.scheduler.step(metrics["top1"])
        self.last_val = metrics
        self.logger.write("val", self.global_step, epoch=epoch, **metrics,
                          lr=self.optimizer.param_groups[0]["lr"])  # fmt: skip
        self.logger.message(f"epoch {epoch}: val clip top-1 {100 * metrics['top1']:.2f}%, "
                            f"top-5 {100 * metrics['top5']:.2f}%, train loss "
                            f"{self.last_epoch.get('loss', math.nan):.4f}")  # fmt: skip


# --- entry point --------------------------------------------------------------------------


def check_batch(cfg: FinetuneConfig, env: Env, num_train: int) -> int:
    """The per-process batch; rejects sizes that cannot work."""
    per_rank = per_rank_batch(cfg.optim.batch_size, env)
    if per_rank < 2 and cfg.mode in BN_TRAINS and not cfg.optim.sync_bn:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} gives one clip per process: "
                          "BatchNorm cannot train on one sample")  # fmt: skip
    if num_train < cfg.optim.batch_size:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} exceeds the {num_train} "
                          "training videos")  # fmt: skip
    return per_rank


def build(cfg: FinetuneConfig, env: Env, run_dir: Path, logger: RunLogger) -> Trainer:
    """Data, classifier, optimizer, schedule and scaler for ``cfg`` on this process."""
    data = build_data(cfg, progress=cfg.run.progress and env.main)
    per_rank = check_batch(cfg, env, len(data.train))
    torch.manual_seed(cfg.run.seed)  # identical new classifier (and random init) on every rank
    model = build_classifier(cfg, data.num_classes)
    freeze_stages(model, first_trained_stage(cfg))
    if use_sync_bn(cfg.optim.sync_bn, env, cfg.mode in BN_TRAINS) and env.world_size > 1:
        config = model.config
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[assignment]
        model.config = config
    model.to(env.device)
    if cfg.optim.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    set_train_mode(model, cfg.mode)
    optimizer = build_optimizer(cfg, model)
    scheduler = None
    if cfg.schedule.kind == "plateau":
        s = cfg.schedule
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=s.factor, patience=s.patience, min_lr=s.min_lr)  # fmt: skip
    amp_dtype = resolve_amp(cfg.optim.amp, env.device)
    scaler = make_scaler(amp_dtype, env.device)
    trainer = Trainer(cfg=cfg, env=env, run_dir=run_dir, data=data, model=model,
                      optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                      amp_dtype=amp_dtype, logger=logger, batch_per_rank=per_rank)  # fmt: skip
    trainer.wrap()  # once: which parameters train never changes
    return trainer


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run (or resume) finetuning / a linear probe as configured; returns the results.

    Raises:
        TrainingInterrupted: SIGTERM/SIGINT; a checkpoint of the exact step was written.
        TrainingDiverged: ``run.max_bad_steps`` non-finite steps in a row.
        ConfigError / DataError / CheckpointError: bad settings, data or checkpoints.
    """
    with open_run(cfg, resumable=cfg.mode != "linear_features") as run:
        if cfg.mode == "linear_features":
            return linear_probe(cfg, run.env, run.run_dir, run.logger, run.info)
        trainer = build(cfg, run.env, run.run_dir, run.logger)
        if run.resume is not None:
            trainer.load(*run.resume)
        trainer.run_epochs()
        return _finish(trainer, run.info)


def _finish(trainer: Trainer, info: dict[str, Any]) -> dict[str, Any]:
    from cpd.eval.multiview import classifier_scores

    cfg, model = trainer.cfg, trainer.model
    test = None
    if cfg.test.enabled:
        model.eval()
        with torch.inference_mode():
            outputs = multiview_test(cfg, trainer.data, trainer.env,
                                     classifier_scores(model, cfg.test.scores),
                                     trainer.data.num_classes)  # fmt: skip
        test = test_metrics(outputs.values, outputs, trainer.data)
        trainer.logger.write("test", trainer.global_step,
                             **{k: test[k] for k in ("top1", "top5", "mean_class_accuracy")})  # fmt: skip
    final = {**{f"train_{k}": v for k, v in trainer.last_epoch.items()},
             **{f"val_clip_{k}": v for k, v in trainer.last_val.items()}}  # fmt: skip
    extra = {"final": final, "epochs": trainer.epoch, "global_step": trainer.global_step}
    return report(cfg, trainer.env, trainer.run_dir, trainer.logger, model, info, test, extra)
