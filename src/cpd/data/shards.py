"""Webdataset tar shards: which shards a spec names, how many samples each holds, reading them.

A corpus in shards is a list of ``.tar`` files (video2dataset's layout: ``00000.tar`` holding
``{key}.mp4``, ``{key}.txt``, ``{key}.json``, with ``00000.parquet`` and ``00000_stats.json``
beside it). A *sample* is a group of members sharing a key; it is *complete* when it has a
video member and a caption member (``.txt``, or ``.json``). Each complete sample has

* a stable id: its key, as written in the tar;
* a stable global row: the offset of its shard (the complete samples of all shards before it,
  in spec order) plus its position among its shard's complete samples. That is what the
  memory bank needs: row ``r`` belongs to the same pair for the whole run, as with a manifest.

The :class:`ShardIndex` holds the shard list and the complete-sample count of each shard. It is
built once and kept in ``cpd-index.json``: per shard, the count comes from video2dataset's
``.parquet`` (rows with status ``success``) or ``_stats.json`` (``successes``) when present,
else from a scan of the tar's headers (no member data read; on a local file that is a few
milliseconds per thousand samples). Local shards are re-scanned when their size or mtime change.

Shards are read sequentially. Remote ones (any fsspec URL: ``s3://``, ``gs://``, ``https://``;
they need fsspec's matching package installed) and compressed ones stream through webdataset's
tar iterator (``webdataset.tariterators``), which reads each wanted sample whole. Local
uncompressed ones (paths and ``file://``) are read through their member table
(:mod:`cpd.data.shard_members`: each member's byte range, from one walk of the headers):
caption members are read, video members are decoded in place as
:class:`~cpd.video.VideoSlice` (FFmpeg reads the packets a clip needs, as from a loose file),
and members of samples that are not wanted are never touched.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cpd.data.shard_members import (
    CAPTION_SUFFIXES,
    VIDEO_SUFFIXES,
    is_complete,
    member_table,
    read_members,
    split_name,
)
from cpd.errors import DataError

__all__ = [
    "CAPTION_SUFFIXES",
    "VIDEO_SUFFIXES",
    "RawSample",
    "ShardIndex",
    "expand_shards",
    "iter_shard",
    "load_shard_index",
    "open_shard",
]

log = logging.getLogger("cpd.data")

INDEX_NAME = "cpd-index.json"
_INDEX_VERSION = 1


def _is_url(spec: str | os.PathLike) -> bool:
    spec = os.fspath(spec)
    return "://" in spec and not spec.startswith("file://")


def _local(spec: str | os.PathLike) -> str:
    spec = os.fspath(spec)
    return spec[len("file://") :] if spec.startswith("file://") else spec


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """The shard URLs or paths a spec names, in order.

    ``spec``: a directory (its ``*.tar``, sorted by name), a brace pattern
    (``shards/{00000..00999}.tar``), a glob, one ``.tar``, a ``::``-separated list of these, or
    a list of them; local paths, ``file://`` or any fsspec URL. A named shard that does not
    exist is an error naming it.
    """
    import braceexpand

    parts = [spec] if isinstance(spec, str) else list(spec)
    parts = [p for item in parts for p in str(item).split("::") if p]
    if not parts:
        raise DataError("data.shards: empty (a directory, a brace pattern or a list of .tar)")
    out: list[str] = []
    missing: list[str] = []
    for part in parts:
        for name in braceexpand.braceexpand(part):
            try:
                out.extend(_expand_one(name))
            except _Missing:
                missing.append(name)
    missing += _missing_urls([u for u in out if _is_url(u)])
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise DataError(f"data.shards: {len(missing)} shard(s) not found: {shown}")
    seen: set[str] = set()
    dupes = [u for u in out if u in seen or seen.add(u)]  # type: ignore[func-returns-value]
    if dupes:
        raise DataError(f"data.shards: shard named twice: {dupes[0]}")
    return out


def _missing_urls(urls: list[str]) -> list[str]:
    """The URLs that do not exist, from one listing of each parent folder (a brace pattern of
    10k remote shards costs one request per folder, not one per shard)."""
    import fsspec

    by_parent: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for url in urls:
        fs, path = fsspec.core.url_to_fs(url)
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        by_parent.setdefault((url.split("://", 1)[0], parent), []).append((url, path))
    missing = []
    for (_, parent), items in by_parent.items():
        fs = fsspec.core.url_to_fs(items[0][0])[0]
        try:
            listed = {str(p).rstrip("/") for p in fs.ls(parent, detail=False)}
        except FileNotFoundError:
            listed = set()
        listed |= {fs._strip_protocol(p) for p in listed}
        missing += [url for url, path in items if path not in listed]
    return missing


class _Missing(Exception):
    """A shard named explicitly that does not exist (collected, then reported together)."""


def _expand_one(name: str) -> list[str]:
    if _is_url(name):
        import fsspec

        fs, path = fsspec.core.url_to_fs(name)
        if any(c in path for c in "*?["):
            found = sorted(fs.glob(path))
        elif not path.endswith(".tar") and fs.isdir(path):
            found = sorted(p for p in fs.ls(path, detail=False) if str(p).endswith(".tar"))
        else:
            return [name]  # checked with its siblings by _missing_urls: one listing per folder
        if not found:
            raise DataError(f"data.shards: no .tar shards at {name}")
        return [str(p) if "://" in str(p) else fs.unstrip_protocol(str(p)) for p in found]
    local = _local(name)
    if any(c in local for c in "*?["):
        found = (
            sorted(str(p) for p in Path().glob(local))
            if not os.path.isabs(local)
            else sorted(str(p) for p in Path("/").glob(local.lstrip("/")))
        )
        if not found:
            raise DataError(f"data.shards: no shards match {name}")
        return found
    if os.path.isdir(local):
        found = sorted(str(p) for p in Path(local).glob("*.tar"))
        if not found:
            raise DataError(f"data.shards: no .tar shards in directory {name}")
        return found
    if not os.path.isfile(local):
        raise _Missing(name)
    return [local]


def open_shard(url: str) -> IO[bytes]:
    """Open one shard (a local file, ``file://`` or an fsspec URL) for sequential reading."""
    if _is_url(url):
        import fsspec

        return fsspec.open(url, "rb").open()
    try:
        # a large buffer: tarfile reads a stream in 10 kB records, one system call each
        return open(_local(url), "rb", buffering=1 << 20)  # noqa: SIM115 (the caller closes it)
    except FileNotFoundError as exc:
        raise DataError(f"shard not found: {url}") from exc


# --- the index ------------------------------------------------------------------------------


@dataclass
class ShardIndex:
    """Shards in order and the complete-sample count of each; rows are offsets + positions."""

    urls: list[str]
    counts: list[int]
    sources: list[str] = field(default_factory=list)  # where each count came from
    # where local shards' member tables are kept (cpd.data.shard_members): the index's places
    table_dirs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.offsets = [0]
        for c in self.counts:
            self.offsets.append(self.offsets[-1] + c)

    @property
    def total(self) -> int:
        """Complete samples over all shards (the number of memory-bank rows)."""
        return self.offsets[-1]

    def row(self, shard: int, position: int) -> int:
        """The global row of the ``position``-th complete sample of shard ``shard``."""
        return self.offsets[shard] + position


def _stat(url: str) -> tuple[int, int] | None:
    if _is_url(url):
        return None
    st = os.stat(_local(url))
    return st.st_size, st.st_mtime_ns


def _sidecar(url: str, suffix: str) -> str:
    stem = url[: -len(".tar")] if url.endswith(".tar") else url
    return stem + suffix


def _exists(url: str) -> bool:
    if _is_url(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        return bool(fs.exists(path))
    return os.path.isfile(_local(url))


def _count_from_sidecars(url: str) -> tuple[int, str] | None:
    """video2dataset's own count of written samples, or None when it left no sidecar."""
    parquet = _sidecar(url, ".parquet")
    if _exists(parquet):
        import pyarrow.parquet as pq

        with open_shard(parquet) as f:
            schema = pq.read_schema(f)
            if "status" in schema.names:
                f.seek(0)
                status = pq.read_table(f, columns=["status"]).column("status").to_pylist()
                return sum(1 for s in status if s == "success"), "parquet"
    stats = _sidecar(url, "_stats.json")
    if _exists(stats):
        with open_shard(stats) as f:
            data = json.loads(f.read().decode("utf-8"))
        if isinstance(data.get("successes"), int):
            return int(data["successes"]), "stats"
    return None


def scan_shard(url: str, table_dirs: Sequence[str | os.PathLike] = ()) -> int:
    """Complete samples of one shard, from its tar headers (tarfile seeks over member data).
    A local uncompressed tar's scan is its member table, kept in ``table_dirs`` for reading
    it (:mod:`cpd.data.shard_members`). A tar that ends early counts what precedes the break
    (a warning says so); a read error that is not about the tar's contents (network,
    permission) propagates, so no short count is kept."""
    table = None if _is_url(url) else member_table(_local(url), table_dirs)
    if table is not None:
        if table.error is not None:
            log.warning("%s: shard ends early (%s); indexing the samples before the break",
                        url, table.error)  # fmt: skip
        return len(table.keys)
    grouper = _Grouper(lambda position: False)
    with open_shard(url) as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r:*") as tar:  # compressed ones too
                for member in tar:
                    tar.members = []  # tarfile keeps every header it read
                    if member.isreg():
                        grouper.select(member.name)
        except (tarfile.ReadError, tarfile.HeaderError, EOFError) as exc:
            log.warning(
                "%s: shard ends early (%s); indexing the samples before the break", url, exc
            )
    return grouper.finish()


def load_shard_index(
    spec: str | Sequence[str], cache_dirs: Sequence[str | os.PathLike] = (), *,
    progress: bool = False, scan: bool = False,
) -> ShardIndex:  # fmt: skip
    """The index of the shards ``spec`` names: read from ``cpd-index.json`` where it is current
    (beside the shards, then in ``cache_dirs``), else built and written to the first writable
    of those places. ``scan=True`` ignores video2dataset's sidecars and scans every tar.
    """
    urls = expand_shards(spec)
    places = []
    first = urls[0]
    if not _is_url(first):
        places.append(Path(_local(first)).parent / INDEX_NAME)
    places += [Path(d) / INDEX_NAME for d in cache_dirs]
    table_dirs = [str(p.parent) for p in places]
    known: dict[str, dict[str, Any]] = {}
    for place in places:
        if place.is_file():
            try:
                data = json.loads(place.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("ignoring unreadable shard index %s (%s)", place, exc)
                continue
            if data.get("version") == _INDEX_VERSION:
                for entry in data.get("shards", []):
                    known.setdefault(entry["url"], entry)
    counts, sources, entries, changed = [], [], [], False
    iterator: Any = urls
    if progress:
        from tqdm import tqdm

        iterator = tqdm(urls, desc="indexing shards", unit="shard", leave=False)
    for url in iterator:
        stat = _stat(url)
        entry = known.get(url)
        if (
            entry is None
            or (stat is not None and entry.get("stat") != list(stat))
            or (scan and entry.get("source") != "scan")
        ):
            if not _exists(url):
                raise DataError(f"data.shards: shard not found: {url}")
            found = None if scan else _count_from_sidecars(url)
            if found is None:
                count, source = scan_shard(url, table_dirs), "scan"
            else:
                count, source = found
            entry = {"url": url, "count": count, "source": source,
                     "stat": list(stat) if stat else None}  # fmt: skip
            changed = True
        counts.append(int(entry["count"]))
        sources.append(str(entry["source"]))
        entries.append(entry)
    if changed:
        # keep the entries of other specs that share this file (train and val shards side
        # by side), so that each spec does not re-count the other's shards at every start
        mine = {e["url"] for e in entries}
        _write_index(places, entries + [e for u, e in known.items() if u not in mine])
    empty = [u for u, c in zip(urls, counts, strict=True) if c == 0]
    if empty:
        log.warning("%d shard(s) hold no complete sample, e.g. %s", len(empty), empty[0])
    index = ShardIndex(urls, counts, sources, table_dirs)
    if index.total == 0:
        raise DataError(
            f"data.shards: no complete sample (video + caption) in {len(urls)} shard(s)"
        )
    return index


def _write_index(places: Sequence[Path], entries: list[dict[str, Any]]) -> None:
    text = json.dumps({"version": _INDEX_VERSION, "shards": entries}, indent=1) + "\n"
    for place in places:
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            tmp = place.with_name(f"{place.name}.{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, place)
            return
        except OSError:
            continue  # read-only beside the shards: try the next place
    log.warning("could not write the shard index to any of %s", [str(p) for p in places])


# --- reading --------------------------------------------------------------------------------


@dataclass
class RawSample:
    """One complete sample as stored: its shard, position, key and members by suffix (bytes;
    the video member of a local shard as a :class:`~cpd.video.VideoSlice`, not read)."""

    shard: int
    position: int
    key: str
    members: dict[str, Any]

    def video(self) -> tuple[str, bytes]:
        """``(suffix, bytes)`` of the video member."""
        suffix, data = self._video()
        return suffix, data if isinstance(data, bytes) else data.read()

    def video_source(self, name: str) -> Any:
        """The video member for decoding, under ``name``: a :class:`~cpd.video.VideoSlice` of
        a local tar (read in place), else a :class:`~cpd.video.VideoBytes`."""
        from cpd.video.sources import VideoBytes, VideoSlice

        data = self._video()[1]
        if isinstance(data, bytes):
            return VideoBytes(name, data)
        return VideoSlice(name, data.path, data.offset, data.size)

    def _video(self) -> tuple[str, Any]:
        for suffix in VIDEO_SUFFIXES:
            if suffix in self.members:
                return suffix, self.members[suffix]
        raise KeyError("no video member")  # complete samples always have one

    def caption(self, caption_key: str = "caption") -> str | None:
        """The ``.txt`` member, else the ``.json`` member's ``caption_key`` field; None if
        neither gives a non-empty string (or the bytes are not UTF-8 / JSON)."""
        try:
            if "txt" in self.members:
                text = self.members["txt"].decode("utf-8").strip()
                return text or None
            if "json" in self.members:
                value = json.loads(self.members["json"].decode("utf-8")).get(caption_key)
                return value.strip() or None if isinstance(value, str) else None
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return None
        return None


class _EndOfRange(Exception):
    """Raised from the member filter: the positions wanted from this shard are all read."""


class _Grouper:
    """Follows member names as the tar streams by, grouping them into samples, counting the
    complete ones, and telling the tar iterator which members to read."""

    def __init__(self, want: Callable[[int], bool], stop: int | None = None) -> None:
        self.want = want
        self.stop = stop
        self.key: str | None = None
        self.suffixes: set[str] = set()
        self.position = 0  # complete samples finished before the current group
        self.serial = 0  # groups begun, so that a key met again later is a new group
        self.reading = False

    def complete(self) -> bool:
        return is_complete(self.suffixes)

    def finish(self) -> int:
        """The shard's complete-sample count, once every name has been seen."""
        return self.position + (1 if self.key is not None and self.complete() else 0)

    def select(self, name: str) -> bool:
        key, suffix = split_name(name)
        if key is None or suffix is None:
            return False
        if key != self.key:
            if self.key is not None and self.complete():
                self.position += 1
            if self.stop is not None and self.position >= self.stop:
                raise _EndOfRange
            self.key, self.suffixes = key, set()
            self.serial += 1
            self.reading = self.want(self.position)
        self.suffixes.add(suffix)
        return self.reading


def _groups(
    url: str,
    want: Callable[[int], bool],
    shard: int = 0,
    on_error: Callable[[str], None] | None = None,
    stop: int | None = None,
    table_dirs: Sequence[str | os.PathLike] = (),
) -> Iterator[RawSample]:
    """Complete samples of one shard whose position ``want`` accepts, in tar order, until
    position ``stop``.

    A tar that ends early (truncated, or a member that cannot be read) ends the iteration after
    reporting it through ``on_error`` (or raising :class:`DataError` when there is none); the
    samples read whole before the break still come out. Other errors (a network failure, a
    permission) propagate: they say nothing about the shard's contents.
    """

    def broken(exc: object) -> None:
        message = f"{url}: shard ends early or cannot be read: {exc}"
        if on_error is None:
            raise DataError(message)
        on_error(message)

    table = None
    if not _is_url(url):
        try:
            table = member_table(_local(url), table_dirs)  # None for a compressed tar
        except FileNotFoundError as exc:
            raise DataError(f"shard not found: {url}") from exc
    if table is None:
        yield from _streamed(url, want, shard, stop, broken)
        return
    end = len(table.keys) if stop is None else min(stop, len(table.keys))
    for p, members in read_members(_local(url), table, (p for p in range(end) if want(p))):
        yield RawSample(shard, p, table.keys[p], members)
    if table.error is not None and (stop is None or stop > len(table.keys)):
        broken(table.error)


def _streamed(
    url: str, want: Callable[[int], bool], shard: int, stop: int | None,
    broken: Callable[[object], None],
) -> Iterator[RawSample]:  # fmt: skip
    """:func:`_groups` for a remote or compressed shard: webdataset's tar iterator reads each
    wanted sample whole, in order."""
    from webdataset.tariterators import tar_file_iterator

    grouper = _Grouper(want, stop)
    current: RawSample | None = None

    def finish() -> Iterator[RawSample]:
        # only members read to their end are kept, so they say whether the sample is whole
        if current is not None and is_complete(current.members):
            yield current

    def reraise(exc: Exception) -> bool:
        raise exc

    serial = 0
    with open_shard(url) as stream:
        try:
            items = tar_file_iterator(stream, handler=reraise, select_files=grouper.select)
            for item in items:
                key, suffix = split_name(item["fname"])
                if current is None or grouper.serial != serial:
                    yield from finish()
                    current, serial = (
                        RawSample(shard, grouper.position, str(key), {}),
                        grouper.serial,
                    )
                current.members[str(suffix)] = item["data"]
            yield from finish()
        except _EndOfRange:
            yield from finish()
        except (tarfile.ReadError, tarfile.HeaderError, EOFError) as exc:
            yield from finish()
            broken(exc)


def iter_shard(
    url: str, shard: int, want: Callable[[int], bool] | None = None,
    on_error: Callable[[str], None] | None = None, stop: int | None = None,
    table_dirs: Sequence[str | os.PathLike] = (),
) -> Iterator[RawSample]:  # fmt: skip
    """The complete samples of shard number ``shard`` at ``url`` (those whose position ``want``
    accepts), read sequentially up to position ``stop``; see :func:`_groups`. A local
    uncompressed shard's member table is kept in the first writable of ``table_dirs`` (a
    :class:`ShardIndex`'s ``table_dirs``); without one, each call walks its headers again."""
    return _groups(url, want or (lambda position: True), shard, on_error, stop, table_dirs)


def shared_shard_index(
    spec: str | Sequence[str], cache_dirs: Sequence[str | os.PathLike] = (), *,
    progress: bool = False,
) -> ShardIndex:  # fmt: skip
    """:func:`load_shard_index` on rank 0 of the process group, sent to every rank.

    Every rank must plan from the same counts: ranks that counted for themselves could
    disagree (a shard rewritten between two reads, node-local run directories), and then run
    different numbers of steps. An error on rank 0 is raised on every rank.
    """
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return load_shard_index(spec, cache_dirs, progress=progress)
    payload: list[Any] = [None]
    if tdist.get_rank() == 0:
        try:
            index = load_shard_index(spec, cache_dirs, progress=progress)
            payload = [(index.urls, index.counts, index.sources, index.table_dirs)]
        except DataError as exc:
            payload = [exc]
    tdist.broadcast_object_list(payload, src=0)
    if isinstance(payload[0], Exception):
        raise payload[0]
    return ShardIndex(*payload[0])
