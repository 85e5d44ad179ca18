"""Where each sample's members lie inside a local uncompressed tar shard.

Reading a local shard needs no tar parsing once its *member table* is known: the complete
samples in tar order, each with its members' ``(offset, size)`` by suffix. The table is built
from the tar's headers by one walk with Python's ``tarfile`` (which seeks over member data),
kept as ``cpd-members/{stem}-{hash}.json`` beside the shard index (the first writable of the
index's places), and used while the tar keeps its size and mtime. Then an epoch reads each
caption member with one ``pread`` and hands each video member to FFmpeg as a
:class:`~cpd.video.VideoSlice`, with nothing parsed in between: ``tarfile`` spends a
fraction of a millisecond per member on headers (webdataset's writer adds a pax header to
every member), which is what made a shard slower than loose files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("cpd.data")

VIDEO_SUFFIXES = ("mp4", "webm", "mkv", "avi", "mov", "m4v")
CAPTION_SUFFIXES = ("txt", "json")
TABLE_DIR = "cpd-members"
_VERSION = 1
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members (skipped, as it does)
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")  # gzip, bz2, xz, zstd


@dataclass(frozen=True)
class MemberTable:
    """The complete samples of one tar, in order: ``keys[p]`` and ``members[p]`` (suffix ->
    ``(offset, size)`` of the member's data) for position ``p``; ``error`` says why the walk
    stopped before the tar's end (a truncated tar), None when it reached the end."""

    stat: tuple[int, int]  # the tar's (size, mtime_ns) when the table was made
    keys: list[str]
    members: list[dict[str, tuple[int, int]]]
    error: str | None = None


def split_name(name: str) -> tuple[str | None, str | None]:
    """A member name's sample key and lower-case suffix, as webdataset splits them."""
    from webdataset.tariterators import base_plus_ext

    key, suffix = base_plus_ext(name)
    return key, suffix.lower() if suffix is not None else None


def is_complete(suffixes: Iterable[str]) -> bool:
    """A sample with a video member and a caption member."""
    have = set(suffixes)
    return any(s in have for s in VIDEO_SUFFIXES) and any(s in have for s in CAPTION_SUFFIXES)


def _is_plain_tar(path: str) -> bool:
    """Whether the local file ``path`` is an uncompressed tar (a compressed one has no byte
    range per member: it is streamed, as remote shards are)."""
    with open(path, "rb") as f:
        return not f.read(6).startswith(_COMPRESSED)


def build_table(path: str) -> MemberTable:
    """Walk the headers of the tar ``path``: members grouped by consecutive key (a key met
    again later starts a new group), complete groups kept. A member whose data runs past the
    file's end, or a header that cannot be read, ends the walk: the groups completed before
    it are kept and ``error`` says where it broke."""
    st = os.stat(path)
    keys: list[str] = []
    members: list[dict[str, tuple[int, int]]] = []
    key: str | None = None
    group: dict[str, tuple[int, int]] = {}
    error = None

    def close() -> None:
        if key is not None and is_complete(group):
            keys.append(key)
            members.append(group)

    with open(path, "rb") as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r:") as tar:
                while (info := tar.next()) is not None:
                    tar.members = []  # tarfile keeps every header it read; a shard can hold millions
                    if not info.isreg() or _META.match(info.name):
                        continue
                    name_key, suffix = split_name(info.name)
                    if name_key is None or suffix is None:
                        continue
                    if info.offset_data + info.size > st.st_size:
                        raise tarfile.ReadError(f"{info.name}: unexpected end of data")
                    if name_key != key:
                        close()
                        key, group = name_key, {}
                    group[suffix] = (info.offset_data, info.size)
        except (tarfile.ReadError, tarfile.HeaderError, EOFError) as exc:
            error = str(exc) or type(exc).__name__
    close()
    return MemberTable((st.st_size, st.st_mtime_ns), keys, members, error)


def _table_name(path: str) -> str:
    full = os.path.abspath(path)
    digest = hashlib.sha1(full.encode("utf-8")).hexdigest()[:12]
    return f"{Path(full).stem}-{digest}.json"


def _load(place: Path, path: str, stat: tuple[int, int]) -> MemberTable | None:
    try:
        data = json.loads(place.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        log.warning("ignoring unreadable member table %s (%s)", place, exc)
        return None
    if (data.get("version") != _VERSION or data.get("path") != os.path.abspath(path)
            or tuple(data.get("stat", ())) != stat):  # fmt: skip
        return None  # another tar's, or this tar before it was rewritten
    keys, members = [], []
    for row in data["samples"]:  # [key, suffix, offset, size, suffix, offset, size, ...]
        keys.append(row[0])
        members.append({row[i]: (row[i + 1], row[i + 2]) for i in range(1, len(row), 3)})
    return MemberTable(stat, keys, members, data.get("error"))


def _save(places: Sequence[Path], path: str, table: MemberTable) -> None:
    rows = [[k, *(v for s, (o, n) in m.items() for v in (s, o, n))]
            for k, m in zip(table.keys, table.members, strict=True)]  # fmt: skip
    text = json.dumps({"version": _VERSION, "path": os.path.abspath(path),
                       "stat": list(table.stat), "error": table.error,
                       "samples": rows}, separators=(",", ":"))  # fmt: skip
    for place in places:
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            tmp = place.with_name(f"{place.name}.{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, place)  # workers that build the same table replace it whole
            return
        except OSError:
            continue  # a read-only place: try the next
    # not kept: the next read of this tar walks its headers again, as without a table


_recent: OrderedDict[tuple[str, tuple[int, int]], MemberTable] = OrderedDict()


def member_table(path: str, dirs: Sequence[str | os.PathLike]) -> MemberTable | None:
    """The member table of the local tar ``path``: from this process's last few, else from
    ``dirs/cpd-members/`` where current, else built (:func:`build_table`) and kept in the
    first writable of ``dirs``; None for a compressed tar. ``FileNotFoundError`` when
    ``path`` does not exist."""
    st = os.stat(path)
    stat = (st.st_size, st.st_mtime_ns)
    memo = (os.path.abspath(path), stat)
    table = _recent.get(memo)
    if table is None:
        places = [Path(d) / TABLE_DIR / _table_name(path) for d in dirs]
        for place in places:
            table = _load(place, path, stat)
            if table is not None:
                break
        else:
            if not _is_plain_tar(path):
                return None
            table = build_table(path)
            if table.stat == stat:  # not rewritten while walked
                _save(places, path, table)
        _recent[memo] = table
        while len(_recent) > 8:  # a worker reads a few shards at a time
            _recent.popitem(last=False)
    _recent.move_to_end(memo)
    return table


def read_members(
    path: str, table: MemberTable, positions: Iterable[int]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(position, members)`` for each position: video members as
    :class:`~cpd.video.VideoSlice` of the tar (not read), the others read with one ``pread``
    each."""
    from cpd.video.sources import VideoSlice

    fd = os.open(path, os.O_RDONLY)
    try:
        for p in positions:
            out: dict[str, Any] = {}
            for suffix, (offset, size) in table.members[p].items():
                if suffix in VIDEO_SUFFIXES:
                    out[suffix] = VideoSlice(f"{table.keys[p]}.{suffix}", path, offset, size)
                else:
                    data = os.pread(fd, size, offset)
                    if len(data) != size:  # the table's stat matched: the tar shrank since
                        raise OSError(f"{path}: {table.keys[p]}.{suffix} ends early")
                    out[suffix] = data
            yield p, out
    finally:
        os.close(fd)
