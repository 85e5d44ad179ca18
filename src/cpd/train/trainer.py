"""What a pretraining and a finetuning run share: the epoch loop, its bookkeeping, checkpoints.

:class:`BaseTrainer` runs the epochs (:meth:`~BaseTrainer.run_epochs`): each step sets the lr,
seeds the global generator (dropout) from (seed, epoch, step, rank), moves the batch to the
device and runs the subclass's :meth:`~BaseTrainer.step`; it counts non-finite (skipped) steps
and stops after ``run.max_bad_steps`` in a row, logs every ``run.log_every`` steps, stops
cleanly on SIGTERM / SIGINT with a checkpoint of the exact step, and at each epoch's end
makes every rank hold rank 0's BatchNorm statistics, validates when due and checkpoints.
Checkpoints hold the counters, model, optimizer, scaler and RNG states, plus what a subclass
adds (:meth:`~BaseTrainer.extra_state`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

import cpd
from cpd import dist
from cpd.config import ConfigError
from cpd.errors import CheckpointError
from cpd.losses.memory_bank import seed_for
from cpd.runtime import Env
from cpd.train.checkpoint import save_training_checkpoint
from cpd.train.run import TrainingDiverged, TrainingInterrupted
from cpd.train.state import StopSignal, capture_rng_state, restore_rng_state
from cpd.train.step import StepResult

__all__ = ["BaseTrainer", "interrupted", "per_rank_batch", "use_sync_bn"]


def interrupted(
    command: str, stop: StopSignal, run: BaseTrainer, mid_epoch: bool
) -> TrainingInterrupted:
    """The error that ends a run stopped by a signal, after its checkpoint was written."""
    where = (f"at epoch {run.epoch + 1}, step {run.step_in_epoch}" if mid_epoch
             else f"after epoch {run.epoch}")  # fmt: skip
    return TrainingInterrupted(
        f"stopped by {stop.name} {where}; checkpoint {run.run_dir / 'last.pt'}. Resume with: "
        f"cpd {command} --config {run.run_dir / 'config.yaml'}",
        stop.name,
    )


def per_rank_batch(batch_size: int, env: Env) -> int:
    """Each process's share of the total ``optim.batch_size``."""
    if batch_size % env.world_size:
        raise ConfigError(f"optim.batch_size={batch_size} (the total) is not divisible by the "
                          f"world size {env.world_size}")  # fmt: skip
    return batch_size // env.world_size


def use_sync_bn(setting: bool | None, env: Env, batchnorm_trains: bool = True) -> bool:
    """``optim.sync_bn`` resolved: null = on for several CUDA processes where BatchNorm trains."""
    if setting is None:
        setting = env.world_size > 1 and env.device.type == "cuda" and batchnorm_trains
    if setting and env.world_size > 1 and env.device.type != "cuda":
        raise ConfigError("optim.sync_bn: SyncBatchNorm needs CUDA (gloo/CPU has none)")
    return setting


@dataclass(kw_only=True)
class BaseTrainer:
    """The state of one run: what is built once, and where the run stands.

    A subclass names its ``command`` and ``dropout_stream``, adds its fields and fills in the
    hooks: :meth:`train_loader`, :meth:`set_step_lr`, :meth:`step`, :meth:`epoch_figures`,
    :meth:`validate` (and, where it has more, :meth:`begin_epoch`, :meth:`step_figures`,
    :meth:`extra_state`, :meth:`check_resume`, :meth:`load_extra`).
    """

    command: ClassVar[str]  # "pretrain" / "finetune", for the resume hint
    dropout_stream: ClassVar[int]  # salt of the per-step seed of the global generator
    extra_sums: ClassVar[tuple[str, ...]] = ()  # :meth:`step`'s per-step counts, summed
    validate_before_save: ClassVar[bool] = False  # validation changes the checkpointed state

    cfg: Any
    env: Env
    run_dir: Path
    data: Any  # with ``train`` (and ``val``: None when there is no validation set)
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    logger: Any  # a RunLogger
    batch_per_rank: int
    wrapped: nn.Module | None = None  # the model under DDP (the model itself in one process)
    epoch: int = 0  # the epoch being run (== completed epochs at an epoch boundary)
    step_in_epoch: int = 0  # steps of ``epoch`` already done
    global_step: int = 0
    bad_steps: int = 0  # consecutive non-finite steps
    last_val: dict[str, float] = field(default_factory=dict)
    last_epoch: dict[str, float] = field(default_factory=dict)

    # hooks ---------------------------------------------------------------------------------

    def begin_epoch(self) -> None:
        """Prepare the model for the current epoch (train modes, the curriculum)."""

    def train_loader(self) -> Iterable[dict[str, Any]]:
        """This rank's batches of the rest of the current epoch (see :meth:`loader_options`)."""
        raise NotImplementedError

    def set_step_lr(self, epoch_float: float) -> float:
        """Set the optimizer's lr for the step at a (fractional) epoch; returns the main lr."""
        raise NotImplementedError

    def step(self, batch: dict[str, Any], index: int) -> tuple[StepResult, dict[str, float]]:
        """One optimizer step on ``batch`` (on the device), the ``index``-th of the epoch;
        returns its result and its :attr:`extra_sums` counts."""
        raise NotImplementedError

    def step_figures(self) -> dict[str, Any]:
        """What a step's log line shows besides the shared figures."""
        return {}

    def epoch_figures(self, sums: dict[str, float]) -> dict[str, Any]:
        """The epoch record's figures besides epoch, loss and seconds, from the epoch's sums."""
        raise NotImplementedError

    def validate(self) -> None:
        """Validate if :meth:`validation_due`; store the metrics in ``last_val``."""

    def extra_state(self) -> dict[str, Any]:
        """The subclass's own part of a checkpoint."""
        return {}

    def check_resume(self, path: Path, ckpt: dict[str, Any]) -> None:
        """Raise :class:`CheckpointError` if ``ckpt`` was written by an incompatible run."""

    def load_extra(self, ckpt: dict[str, Any]) -> None:
        """Restore the subclass's own part of a checkpoint."""

    # the loop ------------------------------------------------------------------------------

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per epoch on each rank (the sampler pads ranks to equal lengths)."""
        planned = getattr(self.data.train, "batches_per_epoch", None)
        if planned is not None:  # a streaming dataset plans its own epochs
            return int(planned(self.env.world_size, self.batch_per_rank))
        per_rank = -(-len(self.data.train) // self.env.world_size)
        return per_rank // self.batch_per_rank

    def loader_options(self) -> dict[str, Any]:
        """The :func:`cpd.train.loader.make_loader` arguments of the current epoch's rest."""
        cfg, env = self.cfg, self.env
        return {"batch_size": self.batch_per_rank, "train": True, "seed": cfg.run.seed,
                "epoch": self.epoch, "workers": cfg.data.workers, "rank": env.rank,
                "world_size": env.world_size, "skip_batches": self.step_in_epoch}  # fmt: skip

    def wrap(self) -> None:
        """(Re)build :attr:`wrapped`: DDP registers the parameters that need gradients when
        it is built, so a change of which parameters train needs a new wrapper."""
        self.wrapped = self.model
        if self.env.world_size > 1:
            ids = [self.env.device.index] if self.env.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def validation_due(self) -> bool:
        """Every ``run.val_every`` epochs and after the last, when there is a validation set."""
        every, epoch = self.cfg.run.val_every, self.epoch
        if self.data.val is None or every <= 0:
            return False
        return epoch % every == 0 or epoch == self.cfg.schedule.epochs

    def run_epochs(self) -> None:
        """Train up to ``schedule.epochs``, checkpointing every epoch and validating when due.

        Raises:
            TrainingInterrupted: SIGTERM/SIGINT; a checkpoint of the exact step was written.
            TrainingDiverged: ``run.max_bad_steps`` non-finite steps in a row.
        """
        with StopSignal() as stop:
            while self.epoch < self.cfg.schedule.epochs:
                if not self.train_epoch(stop):
                    self.save(periodic=False)
                    raise interrupted(self.command, stop, self, mid_epoch=True)
                if self.validate_before_save:
                    self.validate()
                self.save(periodic=True)
                if stop.received is not None:
                    raise interrupted(self.command, stop, self, mid_epoch=False)
                if not self.validate_before_save:
                    self.validate()

    def train_epoch(self, stop: StopSignal) -> bool:
        """Run the rest of the current epoch; returns False if a stop signal ended it early."""
        cfg, env, epoch = self.cfg, self.env, self.epoch
        self.begin_epoch()
        total = self.steps_per_epoch
        loader = self.train_loader()
        sums = dict.fromkeys(("loss", "steps", "clip_events", "skipped_steps",
                              *self.extra_sums), 0.0)  # fmt: skip
        self.logger.start_epoch(epoch, cfg.schedule.epochs, total, self.step_in_epoch)
        for batch in loader:
            i = self.step_in_epoch
            lr = self.set_step_lr(epoch + i / total)
            # Dropout draws from the global generator.
            torch.manual_seed(seed_for(cfg.run.seed, epoch, i, env.rank, self.dropout_stream))
            batch = {k: v.to(env.device, non_blocking=True) if isinstance(v, torch.Tensor)
                     else v for k, v in batch.items()}  # fmt: skip
            result, counts = self.step(batch, i)
            self.step_in_epoch += 1
            self.global_step += 1
            self._account(result, counts, sums, batch["video"].shape[0], lr)
            # A stop on the epoch's last step finishes the epoch (the caller then stops).
            if stop.should_stop(env.device) and self.step_in_epoch < total:
                return False
        self._end_epoch(sums)
        return True

    def _account(self, result: StepResult, counts: dict[str, float], sums: dict[str, float],
                 clips: int, lr: float) -> None:  # fmt: skip
        loss = result.terms["loss"]
        self.bad_steps = self.bad_steps + 1 if result.skipped else 0
        if result.skipped:
            sums["skipped_steps"] += 1
            self.logger.write("event", self.global_step, event="skipped_step", loss=loss)
        else:
            sums["loss"] += loss
            sums["steps"] += 1
            sums["clip_events"] += float(result.clipped)
            for key, value in counts.items():
                sums[key] += value
        rate = self.logger.step(clips * self.env.world_size, loss, lr)
        if self.bad_steps >= self.cfg.run.max_bad_steps:
            raise TrainingDiverged(
                f"{self.bad_steps} non-finite steps in a row (run.max_bad_steps="
                f"{self.cfg.run.max_bad_steps}) at epoch {self.epoch + 1}, step "
                f"{self.step_in_epoch}; last loss terms {result.terms}. Lower optim.lr or "
                f"check the data; the last good checkpoint is in {self.run_dir}"
            )
        if self.global_step % self.cfg.run.log_every == 0:
            terms = torch.tensor(list(result.terms.values()), dtype=torch.float64)
            terms = dist.all_reduce_mean(terms.to(self.env.device))  # collective: every rank
            values = dict(zip(result.terms, terms.tolist(), strict=True))
            self.logger.write(
                "step", self.global_step, epoch=self.epoch, step=self.step_in_epoch - 1,
                lr=lr, **self.step_figures(), grad_norm=result.grad_norm,
                clipped=result.clipped, skipped=result.skipped, clips_per_s=rate, **values,
            )  # fmt: skip

    def _end_epoch(self, sums: dict[str, float]) -> None:
        seconds = self.logger.end_epoch()
        if self.env.world_size > 1:
            # BatchNorm running statistics drift apart per rank (DDP only broadcasts rank 0's
            # at the next forward): make every rank hold the checkpointed state before
            # validation, so that validation evaluates exactly the saved model.
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, 0)
            # Loss sums and counts differ per rank; clip and skip events are global already
            # (one gradient norm, one agreed verdict), so they are not added up.
            keys = ("loss", "steps", *self.extra_sums)
            summed = torch.tensor([sums[k] for k in keys], dtype=torch.float64,
                                  device=self.env.device)  # fmt: skip
            torch.distributed.all_reduce(summed)
            sums.update(zip(keys, summed.tolist(), strict=True))
        self.last_epoch = {
            "epoch": self.epoch + 1,
            "loss": sums["loss"] / max(sums["steps"], 1.0),  # over the steps since a resume
            **self.epoch_figures(sums),
            "seconds": round(seconds, 3),
        }
        self.logger.write("epoch", self.global_step, **self.last_epoch)
        self.epoch += 1
        self.step_in_epoch = 0

    # checkpoints ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything a resume needs."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "bad_steps": self.bad_steps,
            "rng": capture_rng_state(),
            "version": cpd.__version__,
            "world_size": self.env.world_size,
            **self.extra_state(),
        }

    def save(self, periodic: bool) -> None:
        """Rank 0 writes ``last.pt`` (and ``epoch_N.pt`` when due); all ranks then agree."""
        if self.env.main:
            every = self.cfg.run.save_every if periodic else 0
            save_training_checkpoint(self.state(), self.run_dir, self.epoch, every)
        if self.env.world_size > 1:
            torch.distributed.barrier()

    def load(self, path: Path, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`state`."""
        self.check_resume(path, ckpt)
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.scaler is not None and ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            self.load_extra(ckpt)
            self.epoch, self.step_in_epoch = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
            self.global_step, self.bad_steps = int(ckpt["global_step"]), int(ckpt["bad_steps"])
            restore_rng_state(ckpt["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: cannot resume from it: {exc}") from exc
        self.logger.message(
            f"resuming from {path}: epoch {self.epoch + 1}, step {self.step_in_epoch} of "
            f"{self.steps_per_epoch} (global step {self.global_step})"
        )
        self.logger.write("event", self.global_step, event="resume", checkpoint=str(path))
