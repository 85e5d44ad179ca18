"""Training checkpoints: atomic writes, a ``last`` file plus periodic ones, fallback on corruption.

A checkpoint is a plain dict saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``, so it may hold tensors, numbers, strings, lists and dicts
only (RNG states are stored as tensors / lists for that reason).

Writes go to a temporary file in the same directory, are flushed to disk, then renamed over the
target: a crash mid-write leaves the previous checkpoint intact, never a half-written one.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from cpd.errors import CheckpointError
from cpd.models.state_dict import read_torch_file

log = logging.getLogger(__name__)

LAST = "last.pt"
_PERIODIC = re.compile(r"^epoch_(\d+)\.pt$")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely; any unreadable file raises CheckpointError naming it."""
    # mmap: the tensors stay in the file's pages until copied into the live model and
    # banks, so a resume does not hold a second copy of 10 GB of banks in process memory
    return read_torch_file(path, map_location, mmap=True)


def checkpoint_candidates(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, newest first: ``last.pt``, then ``epoch_N.pt`` by decreasing N."""
    run_dir = Path(run_dir)
    periodic = sorted(
        (p for p in run_dir.glob("epoch_*.pt") if _PERIODIC.match(p.name)),
        key=lambda p: int(_PERIODIC.match(p.name).group(1)),  # type: ignore[union-attr]
        reverse=True,
    )
    last = run_dir / LAST
    return ([last] if last.exists() else []) + periodic


def load_latest(
    run_dir: str | Path, map_location: str = "cpu"
) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of ``run_dir`` (or None when there is none).

    A corrupt file is reported (error log naming it) and the previous one is tried; if every
    candidate is unreadable, CheckpointError lists them all.
    """
    candidates = checkpoint_candidates(run_dir)
    failures = []
    for path in candidates:
        try:
            return path, read_checkpoint(path, map_location)
        except CheckpointError as exc:
            log.error("%s; falling back to an earlier checkpoint", exc)
            failures.append(str(exc))
    if failures:
        raise CheckpointError("no readable checkpoint: " + "; ".join(failures))
    return None


def save_training_checkpoint(
    state: dict[str, Any], run_dir: str | Path, epoch: int, every: int = 0
) -> list[Path]:
    """Write ``last.pt`` and, when ``every`` divides ``epoch``, also ``epoch_{epoch}.pt``.

    ``epoch`` is the number of completed epochs the state represents.
    """
    run_dir = Path(run_dir)
    written = [atomic_save(state, run_dir / LAST)]
    if every > 0 and epoch > 0 and epoch % every == 0:
        written.append(atomic_save(state, run_dir / f"epoch_{epoch:04d}.pt"))
    return written
