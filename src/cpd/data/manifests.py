"""Video-caption manifests on disk -> :class:`CaptionRecord` lists.

Formats (``format``; by default the file's content and suffix decide, see :func:`detect_format`):

* ``"instagram"``: the official Instagram-300k caption JSON ``{video_id: {"subset":
  "training"|"validation", "caption": "..."}}`` with videos at
  ``<video_root>/trimmed_resize_{video_id}.mp4`` (:func:`read_instagram_json`);
* ``"jsonl"``: JSON Lines, one row object per line (:func:`read_caption_jsonl`);
* ``"json"``: a JSON list of row objects (:func:`read_caption_json`);
* ``"csv"`` / ``"tsv"``: a header row naming the columns, then one row per line, comma- or
  tab-separated (:func:`read_caption_csv`);
* ``"parquet"``: a Parquet table, read with pyarrow (:func:`read_caption_parquet`); binary
  columns (video bytes) are not read.

Columns of the row formats: ``video_key`` (default ``"video"``) names the column that holds the
video's path relative to the data root, or is a template with braces over the row's columns
(``"{videoid}.mp4"``, ``"{page_dir}/{videoid}.mp4"``; names inside braces are column names as
they are, a format spec such as ``{idx:05d}`` applies to the value); ``caption_key`` (default
``"caption"``) the caption; ``id_key`` (default ``"id"``, optional per row, unique where given;
a key other than the default must name a column of the file) the video id, else the video path
without its suffix; ``split`` the optional split. Any other column is kept in
``CaptionRecord.meta``. A column that the keys need and the file lacks is one error naming it
and listing the columns present. Rows with a ``status`` column whose value is not
``"success"`` (video2dataset's record of a download that wrote no video) are left out and
counted in :class:`ManifestReport`, not treated as errors.

Bad rows: by default every reader checks the whole file and raises one
:class:`~cpd.errors.DataError` listing all the problems (file, 1-based line, Parquet row, JSON
list item or JSON key, what is wrong), so a manifest is fixed in one pass. With
``bad_rows="skip"`` a row with problems is left out instead and recorded as a :class:`BadRow`
in the :class:`ManifestReport` (and, through :func:`read_caption_manifest`'s ``bad_rows_file``,
written as JSON lines); problems of the whole file (unreadable, a missing column, JSON that does
not parse) are still errors.

Indices: ``CaptionRecord.index`` is the record's position (0..N-1, file order) among the rows
kept (valid, written, and of the ``split`` asked for). It is therefore stable for a given
manifest file and split, which is what the memory bank needs (bank row ``index`` belongs to
that pair for the whole run), but the same video has different indices under different split
filters.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from cpd.errors import CPDError, DataError

__all__ = [
    "FORMATS",
    "BadRow",
    "CaptionRecord",
    "ManifestReport",
    "Problems",
    "detect_format",
    "normalize_split",
    "read_caption_csv",
    "read_caption_json",
    "read_caption_jsonl",
    "read_caption_manifest",
    "read_caption_parquet",
    "read_instagram_json",
    "resolve_video_path",
    "write_bad_rows",
]

log = logging.getLogger("cpd.data")

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

# The official Instagram-300k preprocessing names each trimmed, resized video like this.
INSTAGRAM_FILE_PATTERN = "trimmed_resize_{}.mp4"

#: The manifest formats ``format`` may name (``None`` or ``"auto"``: detected).
FORMATS = ("instagram", "jsonl", "json", "csv", "tsv", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".json": "instagram", ".csv": "csv", ".tsv": "tsv",
             ".parquet": "parquet"}  # fmt: skip
_DESCRIPTIONS = {
    "instagram": "one JSON object of objects (the Instagram caption JSON)",
    "jsonl": "JSON Lines (one object per line)",
    "json": "a JSON list",
    "parquet": "a Parquet table",
    "text": "text that is not JSON",
}
_PARQUET_MAGIC = b"PAR1"

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


def read_bytes(path: Path) -> bytes:
    """Read a manifest file, turning a missing/unreadable file into a :class:`DataError`."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _text_lines(data: bytes) -> list[tuple[str, str | None]]:
    """Each line (ends kept) as ``(text, problem)``: a line that is not UTF-8 is decoded with
    replacement characters and carries the problem. A UTF-8 byte-order mark is dropped."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    out: list[tuple[str, str | None]] = []
    for raw in data.splitlines(keepends=True):
        try:
            out.append((raw.decode("utf-8"), None))
        except UnicodeDecodeError as exc:
            why = f"not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
            out.append((raw.decode("utf-8", errors="replace"), why))
    return out


def decode_lines(data: bytes, problems: Problems) -> list[str | None]:
    """Split bytes into text lines (keeping line ends); a line that is not UTF-8 becomes ``None``.

    A UTF-8 byte-order mark at the start is dropped (spreadsheet exports write one).
    """
    out: list[str | None] = []
    for number, (text, problem) in enumerate(_text_lines(data), start=1):
        if problem is not None:
            problems.add(f"line {number}", problem)
        out.append(None if problem is not None else text)
    return out


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


# --- the row formats -----------------------------------------------------------------------


def _jsonl_rows(data: bytes) -> list[_Row]:
    rows = []
    for number, (text, problem) in enumerate(_text_lines(data), start=1):
        if problem is not None:
            rows.append(_Row(number, None, text, problem))
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            why = f"invalid JSON: {exc.msg} (column {exc.colno})"
            rows.append(_Row(number, None, text, why))
            continue
        if not isinstance(obj, dict):
            why = f"expected a JSON object, got {type(obj).__name__}"
            rows.append(_Row(number, None, text, why))
            continue
        rows.append(_Row(number, obj, text))
    return rows


def _object_columns(rows: Iterable[_Row]) -> list[str] | None:
    """The keys found in any parsed row, or None when no row parsed (nothing to check)."""
    keys: dict[str, None] = {}
    parsed = False
    for row in rows:
        if row.data is not None:
            parsed = True
            keys.update(dict.fromkeys(row.data))
    return list(keys) if parsed else None


def _read_object_rows(rows: list[_Row], root: str | Path, split: str | None,
                      reading: _Reading) -> list[CaptionRecord]:  # fmt: skip
    present = _object_columns(rows)
    if present is not None:
        _require_columns(present, "rows", "no row has", reading)
    return reading.finish(_records_from_rows(rows, root, split, reading))


def read_caption_jsonl(
    path: str | Path,
    root: str | Path,
    split: str | None = None,
    *,
    video_key: str = "video",
    caption_key: str = "caption",
    id_key: str = "id",
    bad_rows: BadRowsPolicy = "error",
    report: ManifestReport | None = None,
) -> list[CaptionRecord]:
    """Read a JSON Lines manifest: one object per line with ``video``, ``caption`` [, ``split``, ``id``].

    Blank lines are skipped. ``split`` keeps only rows of that split (aliases as in
    :func:`normalize_split`); ``None`` keeps all rows. Columns, ``bad_rows`` and ``report``:
    see the module docstring.
    """
    path = Path(path)
    reading = _Reading(path, "jsonl", bad_rows, report, _Columns(video_key, caption_key, id_key))
    return _read_object_rows(_jsonl_rows(read_bytes(path)), root, split, reading)


def read_caption_json(
    path: str | Path,
    root: str | Path,
    split: str | None = None,
    *,
    video_key: str = "video",
    caption_key: str = "caption",
    id_key: str = "id",
    bad_rows: BadRowsPolicy = "error",
    report: ManifestReport | None = None,
) -> list[CaptionRecord]:
    """Read a JSON list of row objects (``[{"video": ..., "caption": ...}, ...]``).

    Rows are located as ``item N`` (1-based); otherwise as :func:`read_caption_jsonl`.
    """
    path = Path(path)
    columns = _Columns(video_key, caption_key, id_key)
    reading = _Reading(path, "json", bad_rows, report, columns, unit="item")
    return _read_json_list(path, read_bytes(path), root, split, reading)


def _read_json_list(path: Path, data: bytes, root: str | Path, split: str | None,
                    reading: _Reading) -> list[CaptionRecord]:  # fmt: skip
    obj = _parse_json(path, data)
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of row objects, got {type(obj).__name__}")
    rows = []
    for number, item in enumerate(obj, start=1):
        if isinstance(item, dict):
            rows.append(_Row(number, item, item))
        else:
            why = f"expected a JSON object, got {type(item).__name__}"
            rows.append(_Row(number, None, item, why))
    return _read_object_rows(rows, root, split, reading)


def read_caption_csv(
    path: str | Path,
    root: str | Path,
    split: str | None = None,
    *,
    delimiter: str = ",",
    video_key: str = "video",
    caption_key: str = "caption",
    id_key: str = "id",
    bad_rows: BadRowsPolicy = "error",
    report: ManifestReport | None = None,
) -> list[CaptionRecord]:
    """Read a CSV manifest with a header row naming ``video``, ``caption`` [, ``split``, ``id``].

    Extra columns go to ``meta`` as strings. Quoted fields may span lines; a problem is
    reported at the line where its row starts. Empty ``split``/``id`` cells mean "none".
    ``delimiter="\\t"`` reads TSV. Columns, ``bad_rows`` and ``report``: see the module
    docstring.
    """
    path = Path(path)
    kind = "tsv" if delimiter == "\t" else "csv"
    reading = _Reading(path, kind, bad_rows, report, _Columns(video_key, caption_key, id_key))
    return _read_csv(read_bytes(path), root, split, delimiter, reading)


def _read_csv(data: bytes, root: str | Path, split: str | None, delimiter: str,
              reading: _Reading) -> list[CaptionRecord]:  # fmt: skip
    lines = _text_lines(data)
    text = "".join("\n" if problem else line for line, problem in lines)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[_Row] = []
    end = 0
    for fields in reader:
        start, end = end + 1, reader.line_num
        span = lines[start - 1 : end]
        bad = [(n, p) for n, (_, p) in enumerate(span, start=start) if p is not None]
        if header is None:
            if bad:
                reading.problems.add(f"line {bad[0][0]}", f"header row: {bad[0][1]}")
                reading.problems.raise_if_any()
            if not any(f.strip() for f in fields):
                continue
            header = [name.strip() for name in fields]
            _require_columns(header, f"line {start}", "header lacks", reading)
            continue
        raw = span[0][0] if len(span) == 1 else "".join(line for line, _ in span)
        if bad:
            number, problem = bad[0]
            why = problem if number == start else f"line {number}: {problem}"
            rows.append(_Row(start, None, raw, why))
            continue
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            why = f"{len(fields)} fields, the header has {len(header)}"
            rows.append(_Row(start, None, raw, why))
            continue
        rows.append(_Row(start, dict(zip(header, fields, strict=True)), raw))
    if header is None:
        assert reading.columns is not None
        expected = ", ".join(c for c, _ in reading.columns.required())
        reading.problems.add("line 1", f"no header row (expected columns {expected})")
    return reading.finish(_records_from_rows(rows, root, split, reading))


def read_caption_parquet(
    path: str | Path,
    root: str | Path,
    split: str | None = None,
    *,
    video_key: str = "video",
    caption_key: str = "caption",
    id_key: str = "id",
    bad_rows: BadRowsPolicy = "error",
    report: ManifestReport | None = None,
) -> list[CaptionRecord]:
    """Read a Parquet manifest (needs pyarrow); rows are located as ``row N`` (1-based).

    Binary columns (video2dataset's parquet output keeps the video bytes in one) are not read.
    video2dataset's per-shard table reads with ``video_key="{key}.mp4"`` and the root at the
    shard's folder; its rows whose ``status`` is not ``"success"`` are left out and counted.
    Columns, ``bad_rows`` and ``report``: see the module docstring.
    """
    path = Path(path)
    columns = _Columns(video_key, caption_key, id_key)
    reading = _Reading(path, "parquet", bad_rows, report, columns, unit="row")
    return _read_parquet(path, root, split, reading)


def _read_parquet(path: Path, root: str | Path, split: str | None,
                  reading: _Reading) -> list[CaptionRecord]:  # fmt: skip
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from exc
    try:
        table = pq.ParquetFile(path)
        schema = table.schema_arrow
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except pa.ArrowException as exc:
        raise DataError(f"{path}: cannot read as Parquet: {exc}") from exc
    binary = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary)
    names = [f.name for f in schema if not any(test(f.type) for test in binary)]
    _require_columns(names, "schema", "the table lacks", reading)

    def rows() -> Iterator[_Row]:
        number = 0
        try:
            for batch in table.iter_batches(batch_size=65536, columns=names):
                for row in batch.to_pylist():
                    number += 1
                    yield _Row(number, row, row)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path}: cannot read as Parquet after row {number}: {exc}") from exc

    return reading.finish(_records_from_rows(rows(), root, split, reading))


# --- JSON helpers ----------------------------------------------------------------------------


def read_csv_rows(
    path: Path, required: Sequence[str], problems: Problems
) -> list[tuple[str, dict[str, str]]]:
    """Rows of a CSV file with a header as ``("line N", {column: value})``; blank rows skipped.

    Problems (not UTF-8, missing header columns, wrong field count) go to ``problems``. Quoted
    fields may span lines; a row is reported at the line where it starts.
    """
    lines = decode_lines(read_bytes(path), problems)
    text = "".join("\n" if line is None else line for line in lines)
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[tuple[str, dict[str, str]]] = []
    end = 0
    for fields in reader:
        start, end = end + 1, reader.line_num
        if any(lines[n - 1] is None for n in range(start, end + 1)):
            continue  # already reported as not UTF-8
        if header is None:
            header = [name.strip() for name in fields]
            missing = [c for c in required if c not in header]
            if missing:
                problems.add(
                    f"line {start}", f"header lacks column(s) {', '.join(missing)}; found {header}"
                )
                return []
            continue
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            problems.add(f"line {start}", f"{len(fields)} fields, the header has {len(header)}")
            continue
        rows.append((f"line {start}", dict(zip(header, fields, strict=True))))
    if header is None and not problems:
        problems.add("line 1", f"no header row (expected columns {', '.join(required)})")
    return rows


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` object hook: the stdlib silently keeps the last of repeated keys; we refuse."""
    out: dict[str, Any] = {}
    dupes = []
    for key, value in pairs:
        if key in out:
            dupes.append(key)
        out[key] = value
    if dupes:
        raise _DuplicateKeys(dupes)
    return out


class _DuplicateKeys(Exception):
    def __init__(self, keys: list[str]) -> None:
        self.keys = keys


def _parse_json(path: Path, data: bytes) -> Any:
    """Parse JSON bytes strictly: UTF-8 (line of a bad byte reported), no repeated keys."""
    problems = Problems(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        decode_lines(data, problems)  # reports every non-UTF-8 line with its number
        problems.raise_if_any()
        raise  # unreachable: decode_lines found the bad line
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKeys as exc:
        for key in exc.keys:
            problems.add(f"key {key!r}", "duplicate key (JSON keeps only the last)")
    except json.JSONDecodeError as exc:
        problems.add(f"line {exc.lineno}", f"invalid JSON: {exc.msg} (column {exc.colno})")
    problems.raise_if_any()
    raise AssertionError("unreachable")


def load_json_object(path: Path) -> Any:
    """Parse a JSON file strictly: UTF-8 (line of a bad byte reported), no repeated keys."""
    return _parse_json(Path(path), read_bytes(path))


# --- Instagram JSON ------------------------------------------------------------------------


def read_instagram_json(
    path: str | Path,
    video_root: str | Path,
    split: str | None = None,
    *,
    caption_key: str = "caption",
    bad_rows: BadRowsPolicy = "error",
    report: ManifestReport | None = None,
) -> list[CaptionRecord]:
    """Read the official Instagram-300k caption JSON; videos are ``trimmed_resize_{id}.mp4``.

    ``split``: ``"train"``/``"training"`` or ``"val"``/``"validation"``; ``None`` keeps all.
    Records carry ``split`` as ``"train"``/``"val"``. ``caption_key`` names the entries'
    caption field; ``bad_rows`` and ``report``: see the module docstring (entries are located
    as ``key 'ID'``).
    """
    path = Path(path)
    _Columns("video", caption_key, "id")  # checks the key
    reading = _Reading(path, "instagram", bad_rows, report)
    return _read_instagram(path, read_bytes(path), video_root, split, caption_key, reading)


def _read_instagram(path: Path, data: bytes, video_root: str | Path, split: str | None,
                    caption_key: str, reading: _Reading) -> list[CaptionRecord]:  # fmt: skip
    obj = _parse_json(path, data)
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: expected a JSON object {{video_id: {{subset, caption}}}}, got {type(obj).__name__}"
        )
    wanted = _select(split)
    records: list[CaptionRecord] = []
    for video_id, entry in obj.items():
        reading.report.rows += 1
        where = f"key {video_id!r}"
        if not isinstance(entry, dict):
            why = (
                f"expected an object with 'subset' and {caption_key!r}, got {type(entry).__name__}"
            )
            reading.reject(where, None, [why], {video_id: entry})
            continue
        errors: list[str] = []
        caption = _text(entry, caption_key, errors)
        subset = _text(entry, "subset", errors)
        if not video_id.strip():
            errors.append("empty video id")
        elif "/" in video_id or "\\" in video_id:
            # the id becomes part of a file name; a separator would reach other folders
            errors.append("video id contains a path separator")
        if errors:
            reading.reject(where, None, errors, {video_id: entry})
            continue
        assert caption is not None and subset is not None
        file = os.path.join(video_root, INSTAGRAM_FILE_PATTERN.format(video_id))
        row_split = normalize_split(subset)
        if wanted is not None and row_split != wanted:
            continue
        meta = MappingProxyType(
            {k: v for k, v in entry.items() if k not in ("subset", caption_key)}
        )
        records.append(CaptionRecord(len(records), video_id, file, caption, row_split, meta))
    return reading.finish(records)


# --- formats -------------------------------------------------------------------------------


def _sniff(data: bytes) -> tuple[str | None, bool]:
    """``(kind, certain)`` from the content: ``"instagram"``, ``"jsonl"``, ``"json"``,
    ``"parquet"``, ``"text"`` (not JSON) or None (empty, or one line of broken JSON).

    ``certain`` when the kind rests on a line that parsed (or Parquet's magic bytes) rather
    than on a first character."""
    if data.startswith(_PARQUET_MAGIC):
        return "parquet", True
    lines: list[str] = []
    for raw in io.BytesIO(data):
        if raw.strip():
            lines.append(raw.decode("utf-8", errors="replace").lstrip("\ufeff").strip())
            if len(lines) == 5:
                break
    if not lines:
        return None, False
    first = lines[0]
    if len(lines) == 1:
        try:
            obj = json.loads(first)
        except ValueError:
            return (None if first[:1] in "{[" else "text"), False
        if isinstance(obj, list):
            return "json", True
        if isinstance(obj, dict):
            # Instagram entries are objects; a JSON Lines row holds at least two strings
            entries = sum(isinstance(v, dict) for v in obj.values())
            return ("instagram" if obj and entries * 2 > len(obj) else "jsonl"), True
        return "text", True
    if first.startswith("["):
        return "json", False  # a list over several lines
    for line in lines:
        try:
            if isinstance(json.loads(line), dict):
                return "jsonl", True
        except ValueError:
            continue
    if first.startswith("{"):
        return "instagram", False  # an object over several lines: pretty-printed JSON
    return "text", False


def _format_name(format: str | None) -> str | None:
    """``format`` checked and lower-cased; None for "detect it"."""
    if format is None:
        return None
    kind = str(format).strip().lower()
    if kind in ("", "auto", "null", "none"):
        return None
    if kind not in FORMATS:
        raise _setting_error(
            f"unknown manifest format {format!r}; use one of {', '.join(FORMATS)} "
            "(or null to detect it)"
        )
    return kind


def _contradicts(explicit: str, sniffed: str | None, certain: bool) -> bool:
    """Whether content that looks like ``sniffed`` cannot be a file of format ``explicit``."""
    if explicit == sniffed:
        return False
    if explicit == "parquet" or sniffed == "parquet":
        return True
    if sniffed is None:
        return False
    if explicit in ("csv", "tsv"):
        return certain and sniffed in ("instagram", "jsonl", "json")
    return True  # a JSON format, and the content is another JSON shape or no JSON at all


def _choose_format(path: Path, format: str | None, data: bytes) -> str:
    """The format to read ``path`` as; ``data`` holds the file, or at least its start."""
    explicit = _format_name(format)
    sniffed, certain = _sniff(data)
    if explicit is not None:
        if _contradicts(explicit, sniffed, certain):
            holds = _DESCRIPTIONS.get(sniffed or "", "no Parquet data")
            raise DataError(
                f"{path}: format {explicit!r} was given, but the file holds {holds}; set the "
                "format to null (auto: data.format=null, --format auto) to detect it from the "
                "content and suffix"
            )
        return explicit
    suffix = path.suffix.lower()
    by_suffix = _SUFFIXES.get(suffix)
    if sniffed == "parquet" or by_suffix in ("csv", "tsv", "parquet"):
        return sniffed if sniffed == "parquet" else by_suffix  # type: ignore[return-value]
    if sniffed in ("instagram", "jsonl", "json"):
        return sniffed
    if by_suffix is not None:
        return by_suffix  # the reader reports what is wrong with the content
    raise DataError(
        f"{path}: unknown manifest format {suffix or '(no suffix)'!r}: the content is neither "
        f"JSON nor Parquet; name the file .csv/.tsv or set the format (one of "
        f"{', '.join(FORMATS)})"
    )


def _head(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _content(path: Path, explicit: str | None) -> bytes:
    """The whole file, or only its start where it is (or is to be read as) Parquet: the
    Parquet reader opens the file itself, and needs no copy of a large table in memory."""
    head = _head(path, 1 << 16)
    parquet = explicit == "parquet" or (explicit is None and path.suffix.lower() == ".parquet")
    if head.startswith(_PARQUET_MAGIC) or parquet:
        return head
    return read_bytes(path)


def detect_format(path: str | Path) -> str:
    """The format :func:`read_caption_manifest` reads ``path`` as when none is given.

    ``.csv`` -> csv, ``.tsv`` -> tsv, ``.parquet`` -> parquet; otherwise the content decides:
    one JSON object of objects -> instagram, one object per line -> jsonl, a JSON list -> json,
    Parquet's magic bytes -> parquet; content that says nothing falls back to the suffix
    (``.jsonl`` -> jsonl, ``.json`` -> instagram).
    """
    path = Path(path)
    return _choose_format(path, None, _content(path, None))


def read_caption_manifest(
    path: str | Path,
    root: str | Path,
    split: str | None = None,
    format: str | None = None,
    *,
    video_key: str = "video",
    caption_key: str = "caption",
    id_key: str = "id",
    bad_rows: BadRowsPolicy = "error",
    bad_rows_file: str | Path | None = None,
    report: ManifestReport | None = None,
) -> list[CaptionRecord]:
    """Read any caption manifest.

    ``format``: one of :data:`FORMATS`, or ``None``/``"auto"`` to detect it (see
    :func:`detect_format`); a format that the content contradicts (``"instagram"`` for a JSON
    Lines file, say) is an error that says so. ``video_key`` / ``caption_key`` / ``id_key``
    pick the columns (the Instagram JSON has a fixed layout: only ``caption_key`` applies).
    ``bad_rows="skip"`` leaves rows with problems out; ``bad_rows_file`` then receives them as
    JSON lines (see :class:`BadRow`), and ``report`` (a :class:`ManifestReport`) is filled in
    with the counts.
    """
    path = Path(path)
    data = _content(path, _format_name(format))
    kind = _choose_format(path, format, data)
    columns = _Columns(video_key, caption_key, id_key)
    unit = {"parquet": "row", "json": "item"}.get(kind, "line")
    reading = _Reading(path, kind, bad_rows, report, columns, unit)
    if kind == "instagram":
        if video_key != "video" or id_key != "id":
            raise _setting_error(
                f"{path}: the Instagram caption JSON names its videos trimmed_resize_{{id}}.mp4 "
                f"by their keys: video_key/id_key do not apply (got {video_key!r}, {id_key!r})"
            )
        records = _read_instagram(path, data, root, split, caption_key, reading)
    elif kind == "jsonl":
        records = _read_object_rows(_jsonl_rows(data), root, split, reading)
    elif kind == "json":
        records = _read_json_list(path, data, root, split, reading)
    elif kind in ("csv", "tsv"):
        records = _read_csv(data, root, split, "\t" if kind == "tsv" else ",", reading)
    else:
        records = _read_parquet(path, root, split, reading)
    if bad_rows_file is not None and reading.skip:
        reading.report.write_bad_rows(bad_rows_file)
        if reading.report.bad_rows:
            log.info("%s: %d bad row(s) written to %s", path, reading.report.num_bad_rows,
                        bad_rows_file)  # fmt: skip
    return records
