"""Video-caption manifests on disk -> :class:`CaptionRecord` lists.

Formats:

* the official Instagram-300k caption JSON ``{video_id: {"subset": "training"|"validation",
  "caption": "..."}}`` with videos at ``<video_root>/trimmed_resize_{video_id}.mp4``
  (:func:`read_instagram_json`);
* JSON Lines and CSV manifests with columns ``video`` (a path relative to the data root),
  ``caption`` and optional ``split`` / ``id``; any other column is kept in ``CaptionRecord.meta``
  (:func:`read_caption_jsonl`, :func:`read_caption_csv`, or :func:`read_caption_manifest`, which
  picks the reader from the suffix).

Every reader checks the whole file and raises one :class:`~cpd.errors.DataError` listing all the
problems (file, 1-based line or JSON key, what is wrong), so a manifest is fixed in one pass.

Indices: ``CaptionRecord.index`` is the record's position (0..N-1, file order) among the rows
kept by the ``split`` filter. It is therefore stable for a given manifest file and split, which
is what the memory bank needs (bank row ``index`` belongs to that pair for the whole run), but
the same video has different indices under different split filters.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cpd.errors import DataError

__all__ = [
    "CaptionRecord",
    "Problems",
    "normalize_split",
    "read_caption_csv",
    "read_caption_jsonl",
    "read_caption_manifest",
    "read_instagram_json",
    "resolve_video_path",
]

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


def decode_lines(data: bytes, problems: Problems) -> list[str | None]:
    """Split bytes into text lines (keeping line ends); a line that is not UTF-8 becomes ``None``.

    A UTF-8 byte-order mark at the start is dropped (spreadsheet exports write one).
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    out: list[str | None] = []
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            problems.add(
                f"line {number}",
                f"not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})",
            )
            out.append(None)
    return out


def _select(split: str | None) -> str | None:
    return None if split is None else normalize_split(split)


def _text_field(row: Mapping[str, Any], key: str, where: str, problems: Problems) -> str | None:
    """A required non-empty string field, or ``None`` after recording why not."""
    value = row.get(key)
    if value is None:
        problems.add(where, f"missing field {key!r}")
        return None
    if not isinstance(value, str):
        problems.add(where, f"field {key!r} must be a string, got {type(value).__name__}")
        return None
    if not value.strip():
        problems.add(where, f"empty {key!r}")
        return None
    return value.strip()


def _records_from_rows(
    rows: Iterable[tuple[str, Mapping[str, Any]]],
    root: str | os.PathLike,
    split: str | None,
    problems: Problems,
) -> list[CaptionRecord]:
    """Validate ``(where, row)`` pairs of a JSONL/CSV manifest and build the kept records."""
    wanted = _select(split)
    seen: dict[object, str] = {}
    records: list[CaptionRecord] = []
    for where, row in rows:
        video = _text_field(row, "video", where, problems)
        caption = _text_field(row, "caption", where, problems)
        row_split = row.get("split")
        if row_split is not None and not isinstance(row_split, str):
            problems.add(where, f"field 'split' must be a string, got {type(row_split).__name__}")
            continue
        row_split = normalize_split(row_split) if row_split and row_split.strip() else None
        explicit_id = row.get("id")
        if explicit_id is not None and not isinstance(explicit_id, (str, int)):
            problems.add(where, "field 'id' must be a string or integer")
            continue
        if video is None or caption is None:
            continue
        try:
            path = resolve_video_path(root, video)
        except ValueError as exc:
            problems.add(where, str(exc))
            continue
        # An explicit id must be unique. Without one, a video may carry several captions
        # (MSR-VTT has 20 per clip), so only a repeated (video, caption) pair is a duplicate.
        key: object = ("id", str(explicit_id)) if explicit_id is not None else (video, caption)
        if key in seen:
            what = (
                f"id {explicit_id!r}"
                if explicit_id is not None
                else f"pair ({video!r}, {caption!r})"
            )
            problems.add(where, f"duplicate {what}, first at {seen[key]}")
            continue
        seen[key] = where
        if wanted is not None and row_split != wanted:
            continue
        video_id = (
            str(explicit_id)
            if explicit_id is not None
            else posixpath.splitext(video.replace("\\", "/"))[0]
        )
        meta = {k: v for k, v in row.items() if k not in ("video", "caption", "split", "id")}
        records.append(
            CaptionRecord(len(records), video_id, path, caption, row_split, MappingProxyType(meta))
        )
    return records


def read_caption_jsonl(
    path: str | Path, root: str | Path, split: str | None = None
) -> list[CaptionRecord]:
    """Read a JSON Lines manifest: one object per line with ``video``, ``caption`` [, ``split``, ``id``].

    Blank lines are skipped. ``split`` keeps only rows of that split (aliases as in
    :func:`normalize_split`); ``None`` keeps all rows.
    """
    path = Path(path)
    problems = Problems(path)
    lines = decode_lines(read_bytes(path), problems)

    def rows() -> Iterable[tuple[str, Mapping[str, Any]]]:
        for number, line in enumerate(lines, start=1):
            if line is None or not line.strip():
                continue
            where = f"line {number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.add(where, f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                problems.add(where, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield where, obj

    records = _records_from_rows(rows(), root, split, problems)
    problems.raise_if_any()
    return records


def read_caption_csv(
    path: str | Path, root: str | Path, split: str | None = None
) -> list[CaptionRecord]:
    """Read a CSV manifest with a header row naming ``video``, ``caption`` [, ``split``, ``id``].

    Extra columns go to ``meta`` as strings. Quoted fields may span lines; a problem is
    reported at the line where its row starts. Empty ``split``/``id`` cells mean "none".
    """
    path = Path(path)
    problems = Problems(path)
    rows: list[tuple[str, dict[str, str]]] = read_csv_rows(path, ("video", "caption"), problems)
    # CSV has no null: an empty split/id cell means "none"
    for _, row in rows:
        for key in ("split", "id"):
            if key in row and not row[key].strip():
                del row[key]
    records = _records_from_rows(rows, root, split, problems)
    problems.raise_if_any()
    return records


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


def load_json_object(path: Path) -> Any:
    """Parse a JSON file strictly: UTF-8 (line of a bad byte reported), no repeated keys."""
    data = read_bytes(path)
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


def read_instagram_json(
    path: str | Path, video_root: str | Path, split: str | None = None
) -> list[CaptionRecord]:
    """Read the official Instagram-300k caption JSON; videos are ``trimmed_resize_{id}.mp4``.

    ``split``: ``"train"``/``"training"`` or ``"val"``/``"validation"``; ``None`` keeps all.
    Records carry ``split`` as ``"train"``/``"val"``.
    """
    path = Path(path)
    problems = Problems(path)
    obj = load_json_object(path)
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: expected a JSON object {{video_id: {{subset, caption}}}}, got {type(obj).__name__}"
        )
    wanted = _select(split)
    records: list[CaptionRecord] = []
    for video_id, entry in obj.items():
        where = f"key {video_id!r}"
        if not isinstance(entry, dict):
            problems.add(
                where, f"expected an object with 'subset' and 'caption', got {type(entry).__name__}"
            )
            continue
        caption = _text_field(entry, "caption", where, problems)
        subset = _text_field(entry, "subset", where, problems)
        if not video_id.strip():
            problems.add(where, "empty video id")
            continue
        if "/" in video_id or "\\" in video_id:
            # the id becomes part of a file name; a separator would reach other folders
            problems.add(where, "video id contains a path separator")
            continue
        file = os.path.join(video_root, INSTAGRAM_FILE_PATTERN.format(video_id))
        if caption is None or subset is None:
            continue
        row_split = normalize_split(subset)
        if wanted is not None and row_split != wanted:
            continue
        meta = MappingProxyType({k: v for k, v in entry.items() if k not in ("subset", "caption")})
        records.append(CaptionRecord(len(records), video_id, file, caption, row_split, meta))
    problems.raise_if_any()
    return records


def read_caption_manifest(
    path: str | Path, root: str | Path, split: str | None = None, format: str | None = None
) -> list[CaptionRecord]:
    """Read any caption manifest, choosing the reader from ``format`` or the file suffix.

    ``format``: ``"instagram"`` (the official JSON), ``"jsonl"`` or ``"csv"``; by default
    ``.jsonl`` -> JSONL, ``.csv`` -> CSV, ``.json`` -> Instagram JSON.
    """
    kind = (
        format
        or {".jsonl": "jsonl", ".csv": "csv", ".json": "instagram"}.get(
            Path(path).suffix.lower(), ""
        )
    ).lower()
    readers = {
        "jsonl": read_caption_jsonl,
        "csv": read_caption_csv,
        "instagram": read_instagram_json,
    }
    if kind not in readers:
        raise DataError(
            f"{path}: unknown manifest format {format or Path(path).suffix!r}; use one of {sorted(readers)}"
        )
    return readers[kind](path, root, split)
