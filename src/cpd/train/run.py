"""A training run's surroundings, shared by pretraining and finetuning.

The process's place in the job (:mod:`cpd.runtime`'s ``Env``), the run directory's record of
what ran (resolved config, package version, git revision), which checkpoint to resume from, the
two ways a run ends early, and :class:`Resumable`: the step counters and checkpoints that both
trainers keep.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import cpd
from cpd.config import ConfigError, save_config
from cpd.errors import CheckpointError, CPDError
from cpd.runtime import Env, close_env, git_revision, init_env
from cpd.train.checkpoint import load_latest, read_checkpoint, save_training_checkpoint
from cpd.train.log import RunLogger
from cpd.train.state import StopSignal, capture_rng_state, restore_rng_state

__all__ = [
    "Env",
    "Resumable",
    "RunContext",
    "interrupted",
    "open_run",
    "TrainingDiverged",
    "TrainingInterrupted",
    "find_resume",
    "git_revision",
    "write_run_files",
]


class TrainingInterrupted(CPDError):
    """The run stopped on SIGTERM/SIGINT after writing a checkpoint; ``signal`` names it."""

    def __init__(self, message: str, signal_name: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name


class TrainingDiverged(CPDError):
    """Too many non-finite steps in a row (``run.max_bad_steps``)."""


def write_run_files(cfg: Any, run_dir: Path, env: Env) -> dict[str, Any]:
    """Resolved ``config.yaml`` and ``run_info.json`` (version, git revision, world size)."""
    info = {
        "version": cpd.__version__,
        "git_revision": git_revision(),
        "world_size": env.world_size,
        "device": str(env.device),
        "torch": torch.__version__,
    }
    save_config(cfg, run_dir / "config.yaml")
    text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    header = f"# cpd {info['version']}, git {info['git_revision'] or 'unknown'}\n"
    (run_dir / "config.yaml").write_text(header + text, encoding="utf-8")
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def find_resume(cfg: Any, run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to continue from, according to ``run.resume``."""
    if cfg.run.resume == "auto":
        return load_latest(run_dir)
    if cfg.run.resume == "never":
        if any(run_dir.glob("*.pt")):
            raise ConfigError(
                f"run.resume=never but {run_dir} already holds checkpoints; choose another run.out"
            )
        return None
    path = Path(cfg.run.resume)
    return path, read_checkpoint(path)


@dataclass
class RunContext:
    """A started run: process environment, run directory, logger, what to resume from, and
    the run record written to ``run_dir`` (empty on ranks other than 0)."""

    env: Env
    run_dir: Path
    logger: RunLogger
    resume: tuple[Path, dict[str, Any]] | None
    info: dict[str, Any]


@contextlib.contextmanager
def open_run(cfg: Any, *, resumable: bool = True) -> Iterator[RunContext]:
    """Start a training run of ``cfg`` (its ``run`` section) and always clean up after it.

    Joins the process group, sets the thread count, creates the run directory (rank 0, then
    all ranks meet), finds the checkpoint to resume from (``resumable``), writes the run record
    and opens the logger; on exit closes the logger and leaves a process group it created.
    """
    try:
        env = init_env(cfg.run.device)
    except CPDError as exc:
        raise ConfigError(f"run.device: {exc}") from exc
    run_dir = Path(cfg.run.out)
    logger = None
    try:
        if cfg.run.threads > 0:
            torch.set_num_threads(cfg.run.threads)
        if env.main:
            run_dir.mkdir(parents=True, exist_ok=True)
        if env.world_size > 1:
            torch.distributed.barrier()
        resume = find_resume(cfg, run_dir) if resumable else None
        info = write_run_files(cfg, run_dir, env) if env.main else {}
        logger = RunLogger(run_dir, enabled=env.main, progress=cfg.run.progress,
                           tensorboard=cfg.run.tensorboard)  # fmt: skip
        yield RunContext(env, run_dir, logger, resume, info)
    finally:
        if logger is not None:
            logger.close()
        with contextlib.suppress(Exception):  # never hide the error that ended the run
            close_env(env)


def interrupted(
    command: str, stop: StopSignal, run: Resumable, mid_epoch: bool
) -> TrainingInterrupted:
    """The error that ends a run stopped by a signal, after its checkpoint was written."""
    where = (f"at epoch {run.epoch + 1}, step {run.step_in_epoch}" if mid_epoch
             else f"after epoch {run.epoch}")  # fmt: skip
    return TrainingInterrupted(
        f"stopped by {stop.name} {where}; checkpoint {run.run_dir / 'last.pt'}. Resume with: "
        f"cpd {command} --config {run.run_dir / 'config.yaml'}",
        stop.name,
    )


class Resumable:
    """What a pretraining and a finetuning run share: step counters, checkpoints, resuming.

    A subclass (a dataclass) holds ``cfg``, ``env``, ``run_dir``, ``data`` (with ``train``),
    ``model``, ``optimizer``, ``scaler``, ``logger``, ``batch_per_rank`` and the counters
    ``epoch`` (the epoch being run), ``step_in_epoch`` (its steps done), ``global_step`` and
    ``bad_steps`` (consecutive non-finite steps). It adds what only it has through
    :meth:`extra_state`, :meth:`check_resume` and :meth:`load_extra`.
    """

    cfg: Any
    env: Env
    run_dir: Path
    data: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    logger: Any
    batch_per_rank: int
    epoch: int
    step_in_epoch: int
    global_step: int
    bad_steps: int

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per epoch on each rank (the sampler pads ranks to equal lengths)."""
        planned = getattr(self.data.train, "batches_per_epoch", None)
        if planned is not None:  # a streaming dataset plans its own epochs
            return int(planned(self.env.world_size, self.batch_per_rank))
        per_rank = -(-len(self.data.train) // self.env.world_size)
        return per_rank // self.batch_per_rank

    def extra_state(self) -> dict[str, Any]:
        """The subclass's own part of a checkpoint."""
        return {}

    def check_resume(self, path: Path, ckpt: dict[str, Any]) -> None:
        """Raise :class:`CheckpointError` if ``ckpt`` was written by an incompatible run."""

    def load_extra(self, ckpt: dict[str, Any]) -> None:
        """Restore the subclass's own part of a checkpoint."""

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
