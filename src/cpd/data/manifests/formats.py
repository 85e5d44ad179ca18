"""The per-format readers: JSON Lines, a JSON list, CSV/TSV, Parquet and the Instagram-300k
caption JSON. Each public ``read_caption_*`` reads one file of a known format; the private
``_read_*`` take the file's bytes (or path, for Parquet) for :func:`read_caption_manifest`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import MappingProxyType

from cpd.data.manifests.files import _parse_json, _text_lines, read_bytes
from cpd.data.manifests.records import (
    BadRowsPolicy,
    CaptionRecord,
    ManifestReport,
    normalize_split,
)
from cpd.data.manifests.rows import (
    _Columns,
    _Reading,
    _records_from_rows,
    _require_columns,
    _Row,
    _select,
    _text,
)
from cpd.errors import DataError

# The official Instagram-300k preprocessing names each trimmed, resized video like this.
INSTAGRAM_FILE_PATTERN = "trimmed_resize_{}.mp4"


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
