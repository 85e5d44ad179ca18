"""Reading manifest files strictly: bytes, UTF-8 lines (a bad line reported with its number),
CSV rows with a header, and JSON without repeated keys.

Shared by the caption readers (:mod:`cpd.data.manifests.formats`) and the action-split readers
(:mod:`cpd.data.actions`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cpd.data.manifests.records import Problems
from cpd.errors import DataError


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
