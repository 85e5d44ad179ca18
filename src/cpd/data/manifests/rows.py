"""Rows -> records: the columns a row's video, caption and id come from (:class:`_Columns`),
the state of one read (:class:`_Reading`: problems in error mode, bad rows in skip mode, the
report) and the validation every row format shares (:func:`_records_from_rows`).

The names are private to :mod:`cpd.data.manifests`; its format readers build on them.
"""

from __future__ import annotations

import logging
import os
import posixpath
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cpd.data.manifests.records import (
    STATUS_KEY,
    STATUS_WRITTEN,
    BadRow,
    CaptionRecord,
    ManifestReport,
    Problems,
    normalize_split,
    resolve_video_path,
)
from cpd.errors import CPDError

log = logging.getLogger("cpd.data")


def _select(split: str | None) -> str | None:
    return None if split is None else normalize_split(split)


def _setting_error(message: str) -> CPDError:
    """A bad reader argument (a column key, a format name) as the configuration error it is."""
    from cpd.config import ConfigError  # lazily: the readers need only the standard library

    return ConfigError(message)


# --- columns ---------------------------------------------------------------------------------


class _Columns:
    """The keys that pick a row's video, caption and id, with ``video_key`` compiled."""

    def __init__(self, video_key: str, caption_key: str, id_key: str) -> None:
        for name, value in (("video_key", video_key), ("caption_key", caption_key),
                            ("id_key", id_key)):  # fmt: skip
            if not isinstance(value, str) or not value.strip():
                raise _setting_error(f"{name}: a column name is required, got {value!r}")
        self.video_key, self.caption_key, self.id_key = video_key, caption_key, id_key
        self.template: list[tuple[str, str | None, str, str | None]] | None = None
        if "{" in video_key or "}" in video_key:
            try:
                parts = list(string.Formatter().parse(video_key))
            except ValueError as exc:
                raise _setting_error(f"video_key {video_key!r}: not a template: {exc}") from exc
            names = [name for _, name, _, _ in parts if name is not None]
            if not names or any(not name.strip() for name in names):
                raise _setting_error(
                    f"video_key {video_key!r}: put a column name inside each pair of braces, "
                    "e.g. '{videoid}.mp4'"
                )
            self.template = parts

    @property
    def video_fields(self) -> list[str]:
        """The columns the video path is made of."""
        if self.template is None:
            return [self.video_key]
        return list(dict.fromkeys(name for _, name, _, _ in self.template if name is not None))

    def required(self) -> list[tuple[str, str]]:
        """``(column, the key that needs it)`` for every column the file must have."""
        what = "video_key" if self.template is None else f"video_key {self.video_key!r}"
        out = [(name, what) for name in self.video_fields]
        out.append((self.caption_key, "caption_key"))
        if self.id_key != "id":  # the default id column is optional; a chosen one is not
            out.append((self.id_key, "id_key"))
        return out

    def consumed(self) -> set[str]:
        """Columns that become record fields rather than ``meta``."""
        used = {self.caption_key, "split", self.id_key}
        if self.template is None:
            used.add(self.video_key)
        return used

    def missing(self, present: Iterable[str]) -> str | None:
        """``"'name' (caption_key), ...; columns present: a, b"`` for the needed columns that
        ``present`` lacks, or None when none is missing."""
        have = list(dict.fromkeys(present))
        lacking = dict.fromkeys((c, what) for c, what in self.required() if c not in have)
        if not lacking:
            return None
        names = ", ".join(f"{c!r} ({what})" for c, what in lacking)
        return f"{names}; columns present: {', '.join(have) if have else 'none'}"

    def video(self, row: Mapping[str, Any], errors: list[str]) -> str | None:
        """The row's video path (relative), or None after noting why not."""
        if self.template is None:
            return _text(row, self.video_key, errors)
        pieces = []
        for literal, name, spec, conversion in self.template:
            pieces.append(literal)
            if name is None:
                continue
            value = row.get(name)
            if value is None:
                errors.append(f"missing field {name!r} (video_key {self.video_key!r})")
                return None
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                errors.append(
                    f"field {name!r} (video_key {self.video_key!r}) must be a string or "
                    f"integer, got {type(value).__name__}"
                )
                return None
            if isinstance(value, str):
                value = value.strip()
                if not value:
                    errors.append(f"empty {name!r} (video_key {self.video_key!r})")
                    return None
            try:
                if conversion:
                    value = {"r": repr, "s": str, "a": ascii}[conversion](value)
                pieces.append(format(value, spec))
            except (ValueError, TypeError, KeyError) as exc:
                errors.append(f"video_key {self.video_key!r}: cannot format {value!r}: {exc}")
                return None
        return "".join(pieces)


def _text(row: Mapping[str, Any], key: str, errors: list[str]) -> str | None:
    """A required non-empty string field, or ``None`` after noting why not."""
    value = row.get(key)
    if value is None:
        errors.append(f"missing field {key!r}")
        return None
    if not isinstance(value, str):
        errors.append(f"field {key!r} must be a string, got {type(value).__name__}")
        return None
    if not value.strip():
        errors.append(f"empty {key!r}")
        return None
    return value.strip()


def _optional_id(row: Mapping[str, Any], key: str, errors: list[str]) -> str | None:
    """The row's id: a string or integer; absent, null or an empty string mean none."""
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        errors.append(f"field {key!r} must be a string or integer, got {type(value).__name__}")
        return None
    text = str(value).strip()
    return text or None


def _optional_split(row: Mapping[str, Any], errors: list[str]) -> str | None:
    value = row.get("split")
    if value is None:
        return None
    if not isinstance(value, str):
        errors.append(f"field 'split' must be a string, got {type(value).__name__}")
        return None
    return normalize_split(value) if value.strip() else None


# --- rows -> records --------------------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    """One row as read: its 1-based ``number`` (a line, Parquet row or JSON list item, as the
    reading's ``unit`` says), ``data`` (None when it could not be parsed: ``error`` says why)
    and ``raw``, what a bad-rows file shows (line ends are stripped only then: a manifest may
    hold millions of rows)."""

    number: int
    data: Mapping[str, Any] | None
    raw: Any
    error: str | None = None


class _Reading:
    """The state of one read: problems (error mode), bad rows (skip mode) and the report."""

    def __init__(self, path: Path, format: str, bad_rows: str, report: ManifestReport | None,
                 columns: _Columns | None = None, unit: str = "line") -> None:  # fmt: skip
        if bad_rows not in ("error", "skip"):
            raise _setting_error(f"bad_rows: 'error' or 'skip', got {bad_rows!r}")
        self.path = path
        self.problems = Problems(path)
        self.skip = bad_rows == "skip"
        self.report = report if report is not None else ManifestReport()
        self.report.reset(path, format)
        self.columns = columns
        self.unit = unit  # what a _Row's number counts: "line", "row" (Parquet), "item" (JSON)

    def where(self, number: int) -> str:
        """``"line 7"``, ``"row 7"`` or ``"item 7"``."""
        return f"{self.unit} {number}"

    def reject_row(self, row: _Row, errors: Sequence[str]) -> None:
        """A row of a row format with problems (see :meth:`reject`)."""
        line = row.number if self.unit == "line" else None
        self.reject(self.where(row.number), line, errors, row.raw)

    def reject(self, where: str, line: int | None, errors: Sequence[str], raw: Any) -> None:
        """A row with problems: recorded (skip) or added to the error (error)."""
        if self.skip:
            if isinstance(raw, str):
                raw = raw.rstrip("\r\n")
            self.report.bad_rows.append(BadRow(str(self.path), where, line, "; ".join(errors), raw))
        else:
            for message in errors:
                self.problems.add(where, message)

    def not_written(self, status: Any) -> None:
        key = str(status)
        self.report.not_written[key] = self.report.not_written.get(key, 0) + 1

    def finish(self, records: list[CaptionRecord]) -> list[CaptionRecord]:
        """Raise the problems, if any; log what was left out; return ``records``."""
        self.problems.raise_if_any()
        report = self.report
        report.kept = len(records)
        if report.not_written:
            counts = ", ".join(f"{k}: {n}" for k, n in sorted(report.not_written.items()))
            log.info("%s: left out %d row(s) whose %r is not %r (no video was written): %s",
                     self.path, report.num_not_written, STATUS_KEY, STATUS_WRITTEN, counts)  # fmt: skip
        if report.bad_rows:
            first = report.bad_rows[0]
            log.warning("%s: skipped %d bad row(s) of %d (bad_rows=skip), e.g. %s: %s",
                        self.path, report.num_bad_rows, report.rows, first.where, first.problem)  # fmt: skip
        return records


def _records_from_rows(
    rows: Iterable[_Row], root: str | os.PathLike, split: str | None, reading: _Reading
) -> list[CaptionRecord]:
    """Validate the rows of a row-format manifest and build the kept records."""
    assert reading.columns is not None
    columns = reading.columns
    consumed = columns.consumed()
    wanted = _select(split)
    seen: dict[object, int] = {}
    records: list[CaptionRecord] = []
    for row in rows:
        reading.report.rows += 1
        data = row.data
        if data is None:
            reading.reject_row(row, [row.error or "cannot read the row"])
            continue
        if STATUS_KEY in data and data[STATUS_KEY] != STATUS_WRITTEN:
            reading.not_written(data[STATUS_KEY])
            continue
        errors: list[str] = []
        video = columns.video(data, errors)
        caption = _text(data, columns.caption_key, errors)
        row_split = _optional_split(data, errors)
        explicit_id = _optional_id(data, columns.id_key, errors)
        path = None
        if video is not None and not errors:
            try:
                path = resolve_video_path(root, video)
            except ValueError as exc:
                errors.append(str(exc))
        if not errors:
            # An explicit id must be unique. Without one, a video may carry several captions
            # (MSR-VTT has 20 per clip), so only a repeated (video, caption) pair is a duplicate.
            key: object = ("id", explicit_id) if explicit_id is not None else (video, caption)
            if key in seen:
                what = (
                    f"id {explicit_id!r}"
                    if explicit_id is not None
                    else f"pair ({video!r}, {caption!r})"
                )
                errors.append(f"duplicate {what}, first at {reading.where(seen[key])}")
        if errors:
            reading.reject_row(row, errors)
            continue
        assert video is not None and caption is not None and path is not None
        seen[key] = row.number
        if wanted is not None and row_split != wanted:
            continue
        video_id = (
            explicit_id
            if explicit_id is not None
            else posixpath.splitext(video.replace("\\", "/"))[0]
        )
        meta = {k: v for k, v in data.items() if k not in consumed}
        records.append(
            CaptionRecord(len(records), video_id, path, caption, row_split, MappingProxyType(meta))
        )
    return records


def _require_columns(present: Iterable[str], where: str, lead: str, reading: _Reading) -> None:
    """Raise at once (a problem of the whole file) when a column the keys need is missing;
    ``lead`` begins the message ("header lacks", "no row has", ...)."""
    assert reading.columns is not None
    problem = reading.columns.missing(present)
    if problem is not None:
        reading.problems.add(where, f"{lead} column(s) {problem}")
        reading.problems.raise_if_any()
