"""Which format a manifest is (from its content and suffix, or as given and checked against
the content), and :func:`read_caption_manifest`, which reads any of them.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from cpd.data.manifests.files import read_bytes
from cpd.data.manifests.formats import (
    _jsonl_rows,
    _read_csv,
    _read_instagram,
    _read_json_list,
    _read_object_rows,
    _read_parquet,
)
from cpd.data.manifests.records import BadRowsPolicy, CaptionRecord, ManifestReport
from cpd.data.manifests.rows import _Columns, _Reading, _setting_error
from cpd.errors import DataError

log = logging.getLogger("cpd.data")

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
                "format to null (auto: data.manifest_format=null, --manifest-format auto) to detect it from the "
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
