"""Exceptions raised for bad input. Each names the file, line or key that is wrong."""

from __future__ import annotations


class CPDError(Exception):
    """Base class of the errors that ``cpd`` raises for bad input (never for its own bugs)."""


class VideoDecodeError(CPDError):
    """A video file cannot give a clip: missing, empty, garbage, no video stream, truncated."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DataError(CPDError):
    """A manifest, split file or dataset is malformed; the message names file and line."""


class CheckpointError(CPDError):
    """A checkpoint cannot be loaded: unreadable, or with missing / unexpected / mis-shaped keys."""
