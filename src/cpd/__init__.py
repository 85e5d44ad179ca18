"""CPD: learning spatiotemporal video features from video-text pair discrimination.

The public API is imported lazily so that ``import cpd`` (and ``cpd --help``) stays fast and
does not pull in PyTorch, PyAV or transformers until they are used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "VideoDecodeError": "cpd.errors",
    "DataError": "cpd.errors",
    "CheckpointError": "cpd.errors",
    "load_clip": "cpd.video",
    "load_clips": "cpd.video",
    "load_model": "cpd.models",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cpd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
