"""A training run's surroundings, shared by pretraining and finetuning.

The process group (torchrun's env:// variables), the device, the run directory's record of
what ran (resolved config, package version, git revision), which checkpoint to resume from, the
autocast dtype, and the two ways a run ends early.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import cpd
from cpd import dist
from cpd.config import ConfigError, save_config
from cpd.errors import CPDError
from cpd.train.benchmark import default_amp_dtype
from cpd.train.checkpoint import load_latest, read_checkpoint

__all__ = [
    "Env",
    "TrainingDiverged",
    "TrainingInterrupted",
    "find_resume",
    "git_revision",
    "init_env",
    "resolve_amp",
    "write_run_files",
]


class TrainingInterrupted(CPDError):
    """The run stopped on SIGTERM/SIGINT after writing a checkpoint; ``signal`` names it."""

    def __init__(self, message: str, signal_name: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name


class TrainingDiverged(CPDError):
    """Too many non-finite steps in a row (``run.max_bad_steps``)."""


@dataclass
class Env:
    """This process's place in the job."""

    device: torch.device
    rank: int
    world_size: int
    owns_group: bool  # we initialised the process group and must destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_env(device: str) -> Env:
    """Join torchrun's process group if there is one and pick the device (``run.device``)."""
    try:
        dev, owns = dist.init_from_env(device)
    except CPDError as exc:
        raise ConfigError(f"run.device: {exc}") from exc
    return Env(dev, dist.get_rank(), dist.get_world_size(), owns)


def git_revision() -> str | None:
    """The source checkout's git commit, or None (installed package, no git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


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


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """``optim.amp`` as an autocast dtype (None = fp32)."""
    if amp == "auto":
        return default_amp_dtype(device)
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
