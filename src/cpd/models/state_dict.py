"""State dicts and the files that hold them: safe reading, strict loading, DDP prefixes.

The one place where a ``torch.save`` file is read: model files (:mod:`cpd.models.io`,
:mod:`cpd.models.official`) and training checkpoints (:mod:`cpd.train.checkpoint`) alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cpd.errors import CheckpointError

__all__ = ["load_state_dict_strict", "read_torch_file", "strip_prefix"]

_LIST_LIMIT = 20


def read_torch_file(
    path: str | Path, map_location: str | torch.device = "cpu", *, mmap: bool = False
) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a dict; anything else is a CheckpointError.

    Args:
        path: the file.
        map_location: where the tensors go.
        mmap: map the file instead of reading it: the tensors stay in the file's pages until
            copied elsewhere. Only files written by ``torch.save`` since PyTorch 1.6 (zip
            format) can be mapped.

    Raises:
        CheckpointError: naming the file when it is missing, unreadable or not a dict.
    """
    try:
        data = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as exc:  # torch raises many types (pickle, zip, runtime) for a bad file
        raise CheckpointError(
            f"{path}: cannot read checkpoint: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(data).__name__}")
    return data


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else "")


def load_state_dict_strict(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """Load ``state`` into ``model`` or raise CheckpointError naming every bad key.

    Checks missing keys, unexpected keys, non-tensor values and shape mismatches before
    touching the model, so a failed load never leaves a partially loaded model behind.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    bad = []
    for key in sorted(set(expected) & set(state)):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            bad.append(f"{key} (not a tensor: {type(value).__name__})")
        elif value.shape != expected[key].shape:
            bad.append(f"{key} (checkpoint {list(value.shape)}, model {list(expected[key].shape)})")
    if bad:
        problems.append(f"shape mismatches: {_listing(bad)}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def strip_prefix(state: dict[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Remove ``prefix`` from the keys when every key carries it (DDP-wrapped state dicts)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)
