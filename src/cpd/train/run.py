"""A training run's surroundings, shared by pretraining and finetuning.

The process's place in the job (:mod:`cpd.runtime`'s ``Env``), the run directory's record of
what ran (resolved config, package version, git revision), which checkpoint to resume from, the
two ways a run ends early. The epoch loop and checkpoints both trainers share are
:mod:`cpd.train.trainer`'s.
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
from cpd.errors import CPDError
from cpd.runtime import Env, close_env, git_revision, init_env
from cpd.train.checkpoint import load_latest, read_checkpoint
from cpd.train.log import RunLogger

__all__ = [
    "Env",
    "RunContext",
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
