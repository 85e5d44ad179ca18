"""The records a manifest becomes, and what is left out: :class:`CaptionRecord`,
:class:`BadRow`, :class:`ManifestReport`, :class:`Problems` (the one error that lists every
problem of a file), split names and video paths under the data root.

Only the standard library and :mod:`cpd.errors`: the rest of :mod:`cpd.data.manifests` builds
on this module.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from cpd.errors import DataError

# Split names seen in the wild -> the names records carry.
_SPLIT_ALIASES = {
    "training": "train",
    "train": "train",
    "validation": "val",
    "valid": "val",
    "val": "val",
    "testing": "test",
    "test": "test",
}

# video2dataset records every url it tried in its shard's table, with this column telling
# whether it wrote a video (``"success"``) or not (``"failed_to_download"``, ...).
STATUS_KEY = "status"
STATUS_WRITTEN = "success"

BadRowsPolicy = Literal["error", "skip"]


def normalize_split(name: str) -> str:
    """Map ``training``/``validation``/``testing`` (any case) to ``train``/``val``/``test``.

    Unknown names are returned stripped and lower-cased, so custom split names still work.
    """
    key = name.strip().lower()
    return _SPLIT_ALIASES.get(key, key)


@dataclass(frozen=True)
class CaptionRecord:
    """One video-caption pair.

    ``index`` is stable for a given manifest and split filter (see the module docstring);
    ``path`` is the video file, data root joined, as a ``str`` (cheap to build and to pickle
    into DataLoader workers for 300k records); ``meta`` holds the manifest's extra columns.
    """

    index: int
    video_id: str
    path: str
    caption: str
    split: str | None
    meta: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False)


@dataclass(frozen=True)
class BadRow:
    """A row left out under ``bad_rows="skip"``.

    ``where`` is ``"line N"`` (JSON Lines, CSV), ``"row N"`` (Parquet, 1-based), ``"item N"``
    (a JSON list, 1-based) or ``"key 'ID'"`` (the Instagram JSON); ``line`` is the 1-based line
    number for the line-based formats, else ``None``. ``row`` is the row as read: its text for
    JSON Lines and CSV (so that a row that does not parse is kept as it was), the object for
    Parquet and JSON. ``problem`` lists the row's problems, separated by ``"; "``.
    """

    file: str
    where: str
    line: int | None
    problem: str
    row: Any

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to a bad-rows file."""
        return {"file": self.file, "line": self.line, "where": self.where,
                "problem": self.problem, "row": self.row}  # fmt: skip


@dataclass
class ManifestReport:
    """What a reader did with a manifest's rows; pass one as ``report=`` to be filled in.

    Attributes:
        path: the manifest.
        format: the format it was read as.
        rows: rows (or Instagram entries) read, blank lines not counted.
        kept: records returned (valid, written, of the split asked for).
        not_written: rows left out because their ``status`` is not ``"success"``, by status.
        bad_rows: rows left out for their problems (``bad_rows="skip"`` only).
    """

    path: str = ""
    format: str = ""
    rows: int = 0
    kept: int = 0
    not_written: dict[str, int] = field(default_factory=dict)
    bad_rows: list[BadRow] = field(default_factory=list)

    @property
    def num_not_written(self) -> int:
        """Rows left out for their ``status``."""
        return sum(self.not_written.values())

    @property
    def num_bad_rows(self) -> int:
        """Rows left out for their problems."""
        return len(self.bad_rows)

    def reset(self, path: str | Path, format: str) -> None:
        """Start over for a new read of ``path`` as ``format``."""
        self.path, self.format = str(path), format
        self.rows = self.kept = 0
        self.not_written = {}
        self.bad_rows = []

    def write_bad_rows(self, path: str | Path) -> Path:
        """Write :attr:`bad_rows` to ``path`` as JSON lines (see :func:`write_bad_rows`)."""
        return write_bad_rows(path, self.bad_rows)


def write_bad_rows(path: str | Path, rows: Iterable[BadRow]) -> Path:
    """Write ``rows`` as JSON lines ``{file, line, where, problem, row}`` (atomically; a file
    with no lines when there are none); values JSON cannot hold are written as text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row.to_dict(), ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


class Problems:
    """Collects the problems of one file and raises them together as one :class:`DataError`."""

    def __init__(self, source: str | Path, limit: int = 20) -> None:
        self.source = str(source)
        self.limit = limit
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        """Record a problem at ``where`` (e.g. ``"line 7"`` or ``"key 'abc'"``)."""
        self.items.append(f"{where}: {message}")

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self) -> None:
        """Raise one :class:`DataError` naming the file and the first ``limit`` problems."""
        if not self.items:
            return
        n = len(self.items)
        lines = [f"{self.source}: {n} problem{'s' if n != 1 else ''}:"]
        lines += [f"  {item}" for item in self.items[: self.limit]]
        if n > self.limit:
            lines.append(f"  ... and {n - self.limit} more")
        raise DataError("\n".join(lines))


def resolve_video_path(root: str | os.PathLike, relative: str) -> str:
    """Join a manifest path to the data root; raise ``ValueError`` if it is absolute or escapes it.

    Both ``/`` and ``\\`` separate components, so a manifest written on Windows cannot escape
    the root either.
    """
    text = relative.strip().replace("\\", "/")
    if not text:
        raise ValueError("empty video path")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise ValueError(
            f"video path {relative!r} is absolute; manifests hold paths relative to the data root"
        )
    normal = posixpath.normpath(text)
    if normal == ".." or normal.startswith("../"):
        raise ValueError(f"video path {relative!r} escapes the data root")
    return os.path.join(root, normal)
