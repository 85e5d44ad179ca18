"""What evaluation shares: the process group, the per-rank loader, progress bars and
``results.json`` (the datasets are :mod:`cpd.data.action_sets`; the commands' options are in
``cpd.commands``).

Several processes (``torchrun --nproc_per_node N -m cpd ...``): :func:`init_distributed` joins
the process group from torchrun's environment; every rank evaluates a share of the videos and
the results are gathered exactly (see :mod:`cpd.eval.multiview`). Only rank 0 prints or writes.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cpd.runtime import Env, close_env, git_revision, init_env

__all__ = [
    "EvalEnv",
    "close_distributed",
    "init_distributed",
    "make_eval_loader",
    "progress",
    "results_header",
    "write_results",
]

T = TypeVar("T")


# --- processes ----------------------------------------------------------------------------


#: evaluation's name for :class:`cpd.runtime.Env` (the same class training uses)
EvalEnv = Env


def init_distributed(device: str, quiet: bool = False) -> Env:
    """:func:`cpd.runtime.init_env` with progress bars on rank 0 unless ``quiet``."""
    return init_env(device, show_progress=not quiet)


#: destroy the process group if :func:`init_distributed` created it
close_distributed = close_env


def make_eval_loader(
    dataset: Dataset, env: EvalEnv, *, batch_size: int, workers: int, collate_fn: Any
) -> DataLoader:
    """This rank's share of ``dataset`` in order: sample ``rank``, ``rank + W``, ...

    The sampler pads the shares to equal length by repeating samples from the start; the
    gather drops the repeats by index (:func:`cpd.eval.gather.gather_embeddings`).
    """
    sampler = DistributedSampler(
        dataset, num_replicas=env.world_size, rank=env.rank, shuffle=False, drop_last=False
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_fn, pin_memory=env.device.type == "cuda")  # fmt: skip


def progress(items: Iterable[T], *, total: int | None, desc: str, enabled: bool) -> Iterator[T]:
    """``items`` with a tqdm bar on stderr when ``enabled`` (rank 0, not ``--quiet``)."""
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    with tqdm(items, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True) as bar:
        yield from bar


# --- results ------------------------------------------------------------------------------


def results_header(command: str, checkpoint: str | None, env: EvalEnv | None) -> dict[str, Any]:
    """The provenance every results.json starts with."""
    import cpd

    return {
        "command": command,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "version": cpd.__version__,
        "git_revision": git_revision(),
        "torch": torch.__version__,
        "world_size": env.world_size if env else 1,
        "device": str(env.device) if env else "cpu",
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN (e.g. a std of one split) is not valid JSON
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_results(out: str | Path, results: dict[str, Any]) -> Path:
    """Write ``results`` to ``out/results.json`` (NaN / inf become null); returns the path."""
    path = Path(out) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(results), indent=2) + "\n", encoding="utf-8")
    return path


def pct(value: float) -> str:
    """A fraction as a percentage with two decimals (``nan`` stays ``nan``)."""
    return "nan" if not math.isfinite(value) else f"{100 * value:.2f}"
