"""A process's place in a job, for training and evaluation alike, and the source revision.

:func:`init_env` joins torchrun's process group when there is one (env:// variables, see
:func:`cpd.dist.init_from_env`) and picks the device; :func:`close_env` leaves a group it
created. :func:`git_revision` is what run records and ``results.json`` files name as the code
that produced them.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from cpd import dist

__all__ = ["Env", "close_env", "git_revision", "init_env"]


@dataclass
class Env:
    """This process's place in the job."""

    device: torch.device
    rank: int
    world_size: int
    owns_group: bool  # we initialised the process group and destroy it at the end
    show_progress: bool = False  # progress bars on this process (only ever rank 0)

    @property
    def main(self) -> bool:
        """Rank 0: the process that prints and writes."""
        return self.rank == 0


def init_env(device: str, *, show_progress: bool = False) -> Env:
    """Join torchrun's process group if ``WORLD_SIZE > 1`` and pick the device.

    ``device``: "cpu", "cuda" or "auto"; NCCL with one GPU per process (``LOCAL_RANK``) on
    CUDA, gloo on CPUs. ``show_progress`` is kept on rank 0 only. Raises
    :class:`cpd.errors.CPDError` for a device that is not there.
    """
    dev, owns = dist.init_from_env(device)
    rank = dist.get_rank()
    return Env(dev, rank, dist.get_world_size(), owns, show_progress=show_progress and rank == 0)


def close_env(env: Env) -> None:
    """Destroy the process group if :func:`init_env` created it."""
    if env.owns_group and dist.is_initialized():
        torch.distributed.destroy_process_group()


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
