"""Finetuning and linear probes of the video encoder on labelled actions (``cpd finetune``).

Read top to bottom: :func:`finetune` sets up the process (group) and run directory exactly as
pretraining does (:func:`cpd.train.run.open_run`), then builds the data (:func:`build_data`)
and the classifier (:func:`build_classifier`: the encoder of ``model.init`` with a new ``fc``),
runs the epochs
(:meth:`Trainer.train_epoch`, one :func:`finetune_step` per batch), validates (clip accuracy
of one clip per video, :func:`evaluate_clips`: by default a random training-style clip drawn
from (seed, epoch, index) as the official code validates, or the centre clip with
``val.clip: centre``) and steps ReduceLROnPlateau on it, checkpoints every epoch,
and finishes with the multi-view test (:func:`multiview_test`, the ``cpd test`` machinery),
``results.json``, a printed table and ``export/``. ``mode: linear_features`` branches to
:func:`cpd.train.probe.linear_probe` after the common setup.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cpd import dist
from cpd.config import ConfigError, from_dict, to_dict
from cpd.errors import CheckpointError
from cpd.losses.memory_bank import seed_for
from cpd.models import ResNet3d
from cpd.train.amp import make_scaler, resolve_amp
from cpd.train.finetune_build import (
    FinetuneData,
    build_classifier,
    build_data,
    build_optimizer,
    freeze_stages,
    lr_factor,
    set_train_mode,
)
from cpd.train.finetune_config import FinetuneConfig, first_trained_stage
from cpd.train.finetune_eval import evaluate_clips, multiview_test, report, test_metrics
from cpd.train.loader import make_loader
from cpd.train.log import RunLogger
from cpd.train.probe import linear_probe
from cpd.train.run import (
    Env,
    Resumable,
    TrainingDiverged,
    interrupted,
    open_run,
)
from cpd.train.state import StopSignal
from cpd.train.step import StepResult, finetune_step

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


@dataclass
class Trainer(Resumable):
    """The state of one finetuning / linear run."""

    cfg: FinetuneConfig
    env: Env
    run_dir: Path
    data: FinetuneData
    model: ResNet3d
    wrapped: nn.Module
    optimizer: torch.optim.SGD
    scheduler: Any  # ReduceLROnPlateau or None
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    logger: RunLogger
    batch_per_rank: int
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    bad_steps: int = 0
    last_val: dict[str, float] = field(default_factory=dict)
    last_epoch: dict[str, float] = field(default_factory=dict)

    # checkpoints: the shared part in Resumable -------------------------------------------

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

    def train_epoch(self, stop: StopSignal) -> bool:
        """Run the rest of the current epoch; False if a stop signal ended it early."""
        cfg, env, epoch = self.cfg, self.env, self.epoch
        total = self.steps_per_epoch
        set_train_mode(self.model, cfg.mode)
        loader = make_loader(self.data.train, batch_size=self.batch_per_rank, train=True,  # type: ignore[arg-type]
                             seed=cfg.run.seed, epoch=epoch, workers=cfg.data.workers,
                             rank=env.rank, world_size=env.world_size,
                             skip_batches=self.step_in_epoch)  # fmt: skip
        fmt = torch.channels_last_3d if cfg.optim.channels_last else torch.contiguous_format
        sums = torch.zeros(4, dtype=torch.float64)  # loss, correct, clips, steps
        self.logger.start_epoch(epoch, cfg.schedule.epochs, total, self.step_in_epoch)
        for batch in loader:
            i = self.step_in_epoch
            if cfg.schedule.kind != "plateau":
                for g in self.optimizer.param_groups:
                    g["lr"] = g["base_lr"] * lr_factor(cfg, epoch + i / total)
            lr = self.optimizer.param_groups[0]["lr"]
            torch.manual_seed(seed_for(cfg.run.seed, epoch, i, env.rank, 2))  # dropout
            batch = {k: v.to(env.device, non_blocking=True) for k, v in batch.items()
                     if isinstance(v, torch.Tensor)}  # fmt: skip
            result, correct = finetune_step(self.wrapped, self.optimizer, batch,
                                            amp_dtype=self.amp_dtype, scaler=self.scaler,
                                            clip_norm=cfg.optim.clip_norm, memory_format=fmt)  # fmt: skip
            self.step_in_epoch += 1
            self.global_step += 1
            self._account(result, sums, correct, batch["video"].shape[0], lr)
            if stop.should_stop(env.device) and self.step_in_epoch < total:
                return False
        self._end_epoch(sums)
        return True

    def _account(self, result: StepResult, sums: torch.Tensor, correct: float, clips: int,
                 lr: float) -> None:  # fmt: skip
        loss = result.terms["loss"]
        self.bad_steps = self.bad_steps + 1 if result.skipped else 0
        if result.skipped:
            self.logger.write("event", self.global_step, event="skipped_step", loss=loss)
        else:
            sums += torch.tensor([loss, correct, clips, 1.0], dtype=torch.float64)
        rate = self.logger.step(clips * self.env.world_size, loss, lr)
        if self.bad_steps >= self.cfg.run.max_bad_steps:
            raise TrainingDiverged(
                f"{self.bad_steps} non-finite steps in a row (run.max_bad_steps) at epoch "
                f"{self.epoch + 1}, step {self.step_in_epoch}; lower optim.lr or check the "
                f"data; the last good checkpoint is in {self.run_dir}"
            )
        if self.global_step % self.cfg.run.log_every == 0:
            mean_loss = float(dist.all_reduce_mean(torch.tensor([loss], dtype=torch.float64)))
            self.logger.write("step", self.global_step, epoch=self.epoch,
                              step=self.step_in_epoch - 1, lr=lr, loss=mean_loss,
                              grad_norm=result.grad_norm, skipped=result.skipped,
                              clips_per_s=rate)  # fmt: skip

    def _end_epoch(self, sums: torch.Tensor) -> None:
        seconds = self.logger.end_epoch()
        if self.env.world_size > 1:
            for buffer in self.model.buffers():  # one model on every rank (see pretrain)
                torch.distributed.broadcast(buffer, 0)
            torch.distributed.all_reduce(sums)
        steps = max(float(sums[3]), 1.0)
        self.last_epoch = {"epoch": self.epoch + 1, "loss": float(sums[0]) / steps,
                           "clip_top1": float(sums[1]) / max(float(sums[2]), 1.0),
                           "lr": self.optimizer.param_groups[0]["lr"],
                           "seconds": round(seconds, 3)}  # fmt: skip
        self.logger.write("epoch", self.global_step, **self.last_epoch)
        self.epoch += 1
        self.step_in_epoch = 0

    def validate(self) -> None:
        """Clip accuracy (``val.clip``: a random clip of this epoch, or the centre clip); steps
        the plateau schedule on its top-1."""
        cfg, epoch = self.cfg, self.epoch
        if self.data.val is None or cfg.run.val_every <= 0:
            return
        if epoch % cfg.run.val_every and epoch != cfg.schedule.epochs:
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
    if cfg.optim.batch_size % env.world_size:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} (the total) is not "
                          f"divisible by the world size {env.world_size}")  # fmt: skip
    per_rank = cfg.optim.batch_size // env.world_size
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
    sync_bn = cfg.optim.sync_bn
    if sync_bn is None:
        sync_bn = env.world_size > 1 and env.device.type == "cuda" and cfg.mode in BN_TRAINS
    if sync_bn and env.world_size > 1:
        if env.device.type != "cuda":
            raise ConfigError("optim.sync_bn: SyncBatchNorm needs CUDA (gloo/CPU has none)")
        config = model.config
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[assignment]
        model.config = config
    model.to(env.device)
    if cfg.optim.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    set_train_mode(model, cfg.mode)
    wrapped: nn.Module = model
    if env.world_size > 1:
        ids = [env.device.index] if env.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = build_optimizer(cfg, model)
    scheduler = None
    if cfg.schedule.kind == "plateau":
        s = cfg.schedule
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=s.factor, patience=s.patience, min_lr=s.min_lr)  # fmt: skip
    amp_dtype = resolve_amp(cfg.optim.amp, env.device)
    scaler = make_scaler(amp_dtype, env.device)
    return Trainer(cfg, env, run_dir, data, model, wrapped, optimizer, scheduler, scaler,
                   amp_dtype, logger, per_rank)  # fmt: skip


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
        with StopSignal() as stop:
            while trainer.epoch < cfg.schedule.epochs:
                if not trainer.train_epoch(stop):
                    trainer.save(periodic=False)
                    raise interrupted("finetune", stop, trainer, mid_epoch=True)
                trainer.validate()  # before saving: the plateau state is part of the epoch
                trainer.save(periodic=True)
                if stop.received is not None:
                    raise interrupted("finetune", stop, trainer, mid_epoch=True)
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
