"""Embeddings of many videos or captions, exact under several processes, and their files.

Videos: a CPD model gives the renormalised mean of its views' unit embeddings; a classifier
(``ResNet3d``) gives the mean of its views' pooled backbone features (``forward_features``,
before dropout and ``fc``). Texts: ``CPDModel.encode_text`` in batches, each rank embedding
every ``world_size``-th caption, gathered by index.

Files. ``<name>.npy`` (float32 ``[N, D]``) or ``<name>.safetensors`` (the float32 tensor
``"embeddings"``; the metadata holds ``count``, ``dim``, ``ids_file`` and what the writer was
given, such as ``model``), and beside either one ``<name>_ids.jsonl``: the N ids in row order,
one JSON string per line. :func:`read_embeddings` reads both back.

* Why a sidecar: ids in the safetensors header grow it with N, and readers refuse headers over
  100 MB, a few million ids; a failure found only after the whole pass. The header now holds
  small metadata only, its size fixed before the pass.
* Why JSON lines rather than Parquet: one id per line can be written and read a line at a time
  with no dependency, line ``i`` is row ``i`` for ``head``, ``sed`` and ``wc -l``, and JSON
  escaping keeps any id (a path with a newline) on its line. Parquet would compress better,
  but a single column of short strings gains little and every reader would need pyarrow.
* Streaming (:class:`EmbeddingWriter`): the row count is known before the pass (videos,
  captions, the shards' index), so the file is created at that size with its header and every
  batch is written at its rows' positions as it comes, in any order; rows that never come
  (videos that fail to decode) are squeezed out at the end chunk by chunk and the header is
  rewritten for the final count in place (the header's space is reserved for the largest
  count, so it never moves). Both formats work this way: safetensors needs its sizes up front,
  and the reserved header gives them. Memory holds one batch of embeddings, plus the ids.
* Under torchrun (:func:`stream_embeddings`) every batch is gathered to rank 0 as it is made
  and written at its global rows, so rank 0 never holds more than one round of batches.
* Older files (ids as ``<name>_ids.json``, a JSON list, or in the safetensors metadata key
  ``"ids"``) are still read: it costs a branch each.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cpd.errors import CPDError, DataError

__all__ = [
    "FORMATS",
    "EmbeddingChunk",
    "EmbeddingWriter",
    "WrittenEmbeddings",
    "check_unique_ids",
    "embed_texts",
    "expand_video_inputs",
    "ids_file_name",
    "iter_text_embeddings",
    "open_on_main",
    "read_caption_inputs",
    "read_embeddings",
    "stream_embeddings",
    "text_chunks",
    "video_chunks",
    "video_feature_fn",
    "write_embeddings",
]

FORMATS = ("npy", "safetensors")
_LIST_SUFFIXES = (".txt", ".lst")


def expand_video_inputs(items: Sequence[str]) -> list[str]:
    """Video paths from ``items``: paths, glob patterns (``"videos/**/*.mp4"``), or list files
    (``.txt`` / ``.lst``, one path per line, relative paths taken from the list's folder).

    Order is kept (a glob's matches sorted); a path given twice is kept once. A pattern that
    matches nothing or a missing path or list file is a :class:`DataError`.
    """
    out: dict[str, None] = {}
    for item in items:
        if any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise DataError(f"{item}: the pattern matches no file")
            out.update(dict.fromkeys(matches))
        elif Path(item).suffix.lower() in _LIST_SUFFIXES:
            base = Path(item).parent
            try:
                lines = Path(item).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise DataError(f"{item}: cannot read the video list: {exc}") from exc
            for line in lines:
                if line.strip():
                    path = Path(line.strip())
                    out[str(path if path.is_absolute() else base / path)] = None
        else:
            if not Path(item).exists():
                raise DataError(f"{item}: no such video")
            out[item] = None
    if not out:
        raise DataError("no videos given")
    return list(out)


def read_caption_inputs(
    path: str | Path, root: str | Path | None = None
) -> tuple[list[str], list[str]]:
    """``(texts, ids)`` of a caption file: a ``.txt`` file (one caption per line; ids are the
    1-based line numbers) or a caption manifest (``.jsonl`` / ``.csv`` / ``.json``; ids are
    the video ids, repeated for several captions of one video)."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DataError(f"{path}: cannot read captions: {exc}") from exc
        pairs = [(line.strip(), str(n)) for n, line in enumerate(lines, 1) if line.strip()]
        if not pairs:
            raise DataError(f"{path}: no captions")
        return [t for t, _ in pairs], [i for _, i in pairs]
    from cpd.data import read_caption_manifest

    records = read_caption_manifest(path, root if root is not None else path.parent)
    if not records:
        raise DataError(f"{path}: no captions")
    return [r.caption for r in records], [r.video_id for r in records]


def video_feature_fn(model: torch.nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """``(fn, dim)``: ``fn(views [V, 3, T, S, S]) -> [dim]`` for a CPD model or a classifier."""
    from cpd.eval.zeroshot import video_embedding_fn
    from cpd.models import CPDModel

    if isinstance(model, CPDModel):
        return video_embedding_fn(model), model.embed_dim

    def features(views: torch.Tensor) -> torch.Tensor:
        return model.forward_features(views).double().mean(dim=0)

    return features, int(model.num_features)


@torch.no_grad()
def iter_text_embeddings(
    model: Any, texts: Sequence[str], env: Any, *, batch_size: int = 256
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's ``(index [b] int64, float64 unit embeddings [b, D])``, a batch at a time:
    rank ``r`` embeds texts ``r, r + W, ...``. Not collective."""
    from cpd.eval.common import progress

    mine = range(env.rank, len(texts), env.world_size)
    starts = range(0, len(mine), batch_size)
    for start in progress(starts, total=len(starts), desc="texts", enabled=env.show_progress):
        chunk = mine[start : start + batch_size]
        emb = F.normalize(model.encode_text([texts[i] for i in chunk]).double(), dim=1)
        yield torch.tensor(chunk, dtype=torch.int64), emb


@torch.no_grad()
def embed_texts(
    model: Any, texts: Sequence[str], env: Any, *, batch_size: int = 256
) -> torch.Tensor:
    """``[N, D]`` float64 unit text embeddings of ``texts``, in order, on every rank.

    Rank ``r`` embeds texts ``r, r + W, ...`` in batches; rows are gathered by index.
    """
    from cpd.eval.gather import gather_embeddings

    parts, index = [], []
    for rows, emb in iter_text_embeddings(model, texts, env, batch_size=batch_size):
        parts.append(emb)
        index.append(rows)
    dim = model.embed_dim
    device = env.device if env.world_size > 1 and env.device.type == "cuda" else "cpu"
    local = torch.cat(parts).to(device) if parts else torch.zeros(0, dim, dtype=torch.float64)
    mine = torch.cat(index) if index else torch.zeros(0, dtype=torch.int64)
    emb, _ = gather_embeddings(local.to(device), mine.to(device), num_samples=len(texts))
    return emb.cpu()


# --- streaming a pass to disk ------------------------------------------------------------


@dataclass
class EmbeddingChunk:
    """One batch of one rank: its rows' global positions, their embeddings by output name
    (``"videos"``, ``"texts"``), the ids when they come with the data (shard keys), and the
    ``(row, path, reason)`` of the videos that failed (left out of ``rows``)."""

    rows: torch.Tensor  # int64 [b]
    values: dict[str, torch.Tensor]  # name -> [b, D]
    ids: list[str] | None = None
    failed: list[tuple[int, str, str]] = field(default_factory=list)


def text_chunks(
    model: Any, texts: Sequence[str], env: Any, *, batch_size: int = 256
) -> Iterator[EmbeddingChunk]:
    """:func:`iter_text_embeddings` as chunks of the output ``"texts"``."""
    for rows, emb in iter_text_embeddings(model, texts, env, batch_size=batch_size):
        yield EmbeddingChunk(rows, {"texts": emb})


def video_chunks(
    dataset: Any,
    fn: Callable[[torch.Tensor], torch.Tensor],
    env: Any,
    *,
    dim: int,
    batch_size: int = 4,
    workers: int = 0,
) -> Iterator[EmbeddingChunk]:
    """This rank's video outputs (:func:`cpd.eval.multiview.iter_video_outputs`) as chunks of
    the output ``"videos"``, failed videos left out of the rows and listed."""
    from cpd.eval.multiview import iter_video_outputs

    outputs = iter_video_outputs(dataset, fn, env, dim=dim, batch_size=batch_size,
                                 workers=workers, desc="videos")  # fmt: skip
    for index, values, failed in outputs:
        ok = torch.ones(len(index), dtype=torch.bool)
        if failed:
            ok &= ~torch.isin(index, torch.tensor([f[0] for f in failed], dtype=torch.int64))
        yield EmbeddingChunk(index[ok], {"videos": values[ok]}, failed=failed)


def open_on_main(env: Any, make: Callable[[], Any]) -> Any:
    """``make()`` on rank 0 (None elsewhere); a :class:`CPDError` it raises is raised on every
    rank, so that no rank is left waiting in a collective for one that gave up."""
    result, error = None, None
    if env.main:
        try:
            result = make()
        except CPDError as exc:
            if env.world_size == 1:
                raise
            error = str(exc)
    if env.world_size > 1:
        message = [error]
        torch.distributed.broadcast_object_list(message, src=0)
        if message[0] is not None:
            raise DataError(message[0])
    return result


def stream_embeddings(
    chunks: Iterable[EmbeddingChunk],
    env: Any,
    writers: Mapping[str, EmbeddingWriter] | None,
    dims: Mapping[str, int],
) -> dict[int, tuple[str, str]]:
    """Write every rank's chunks through ``writers`` (rank 0's; None on the others) as they
    come; returns the failed rows (``row -> (path, reason)``) on rank 0.

    Under a process group each round gathers one chunk of every rank (an empty one from a rank
    that has finished) until all have finished, so rank 0 holds one round at a time; rows that
    arrive twice (a sampler's padding) are written once. A :class:`CPDError` on any rank (a
    bad shard, a duplicate id found by a writer) stops every rank at the next round with that
    message. Collective: call it on every rank, with the same ``dims`` (output name -> D).
    """
    failed: dict[int, tuple[str, str]] = {}
    error: str | None = None
    source = iter(chunks)
    while True:
        chunk = None
        if error is None:
            try:
                chunk = next(source, None)
            except CPDError as exc:
                if env.world_size == 1:
                    raise
                error = str(exc)
        pairs = []
        if chunk is not None and chunk.ids is not None:
            pairs = list(zip(chunk.rows.tolist(), chunk.ids, strict=True))
        status: list[Any] = [(chunk is not None, error, pairs, chunk.failed if chunk else [])]
        if env.world_size > 1:
            # ids and failures are Python objects: they travel with the round's status
            mine, status = status[0], [None] * env.world_size
            torch.distributed.all_gather_object(status, mine)
        errors = [e for _, e, _, _ in status if e is not None]
        if errors:
            raise DataError(errors[0])
        if not any(has for has, _, _, _ in status):
            return failed
        ids = {row: key for _, _, got, _ in status for row, key in got}
        error = _write_round(chunk, ids, env, writers, dims)
        for _, _, _, got in status:
            failed.update((row, (path, reason)) for row, path, reason in got)
        # nothing of this round may stay alive while the next chunk is made
        del chunk, pairs, status, ids


def _write_round(
    chunk: EmbeddingChunk | None,
    ids: dict[int, str],
    env: Any,
    writers: Mapping[str, EmbeddingWriter] | None,
    dims: Mapping[str, int],
) -> str | None:
    """Gather one round of chunks and write it on rank 0; returns the message of a
    :class:`CPDError` raised by a writer under a process group (raised without one)."""
    from cpd.eval.gather import gather_embeddings

    device = env.device if env.world_size > 1 and env.device.type == "cuda" else "cpu"
    rows = chunk.rows if chunk is not None else torch.zeros(0, dtype=torch.int64)
    error = None
    for name in sorted(dims):  # every rank gathers every output, whatever rank 0 thinks of it
        local = chunk.values[name] if chunk is not None else torch.zeros(0, dims[name])
        values, index = gather_embeddings(local.double().to(device), rows.to(device))
        if writers is None or error is not None:
            continue
        index_np = index.cpu().numpy()
        try:
            writers[name].write(index_np, values.cpu().numpy(),
                                [ids[r] for r in index_np.tolist()] if ids else None)  # fmt: skip
        except CPDError as exc:
            if env.world_size == 1:
                raise
            error = str(exc)
    return error


# --- files -------------------------------------------------------------------------------

# safetensors' readers refuse a header over 100 MB
_SAFETENSORS_MAX_HEADER = 100_000_000
# rows moved at a time when the rows that never came are squeezed out at the end
_COPY_BYTES = 1 << 26


def ids_file_name(name: str) -> str:
    """The ids sidecar of output ``name``: ``<name>_ids.jsonl``."""
    return f"{name}_ids.jsonl"


def check_unique_ids(
    ids: Sequence[str], where: Callable[[int], str] | None = None, *, limit: int = 5
) -> None:
    """Raise :class:`DataError` naming the first duplicates of ``ids`` and their rows
    (``where(row)`` describes a row; default ``"row N"``)."""
    where = where or (lambda row: f"row {row}")
    first: dict[str, int] = {}
    problems = []
    for row, key in enumerate(ids):
        seen = first.setdefault(key, row)
        if seen != row:
            problems.append(f"duplicate id {key!r} at {where(row)}, first at {where(seen)}")
            if len(problems) == limit:
                break
    if problems:
        raise DataError("; ".join(problems) + (" ..." if len(problems) == limit else ""))


@dataclass
class WrittenEmbeddings:
    """What :meth:`EmbeddingWriter.close` wrote: the data file, the ids sidecar, the rows and
    their size, and the rows of the input that never came (left out, in order)."""

    data: Path
    ids: Path
    count: int
    dim: int
    missing: list[int]

    @property
    def files(self) -> list[Path]:
        """``[data, ids]``."""
        return [self.data, self.ids]


def _npy_header(rows: int, dim: int, size: int = 0) -> bytes:
    """A ``.npy`` version 1.0 header for float32 ``[rows, dim]``, padded to ``size`` bytes (at
    least the 64-byte multiple numpy itself would write)."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    size = max(size, -(-(len(text) + 11) // 64) * 64)  # magic, version, u16 length, "\n"
    return (np.lib.format.magic(1, 0) + struct.pack("<H", size - 10)
            + text.encode("latin1").ljust(size - 11) + b"\n")  # fmt: skip


def _safetensors_header(rows: int, dim: int, metadata: Mapping[str, str], size: int = 0) -> bytes:
    """A safetensors header (u64 length + JSON) for the float32 tensor ``"embeddings"`` of
    ``[rows, dim]``, padded with spaces (as the format allows) to ``size`` bytes, a multiple of
    8 so the data is aligned."""
    head = {"__metadata__": dict(metadata),
            "embeddings": {"dtype": "F32", "shape": [rows, dim],
                           "data_offsets": [0, rows * dim * 4]}}  # fmt: skip
    text = json.dumps(head, separators=(",", ":")).encode("utf-8")
    size = max(size, -(-(len(text) + 8) // 8) * 8)
    return struct.pack("<Q", size - 8) + text.ljust(size - 8)


class EmbeddingWriter:
    """Stream float32 embeddings ``[capacity, dim]`` into ``out/<name>.<fmt>`` and their ids
    into ``out/<name>_ids.jsonl``, batch by batch, each row at its position.

    Everything that can be checked is checked here, before any row: the format, the ids
    (when given: one per row, unique unless ``unique_ids=False``), the header size, that
    ``out`` is writable and holds ``capacity`` rows. The data goes to ``<file>.partial``,
    sized for ``capacity`` rows; :meth:`write` puts rows where they belong and keeps no
    embeddings; :meth:`close` squeezes out the rows that never came, rewrites the header for
    the count and renames the files into place. Used as a context manager, the partial files
    are removed if the block raises before :meth:`close`.

    Args:
        out: output folder (created).
        name: output name (``videos``, ``texts``).
        dim: embedding size.
        capacity: rows of the input (every row that may come).
        fmt: ``npy`` or ``safetensors``.
        ids: the id of every row, when known before the pass; otherwise each :meth:`write`
            brings the ids of its rows.
        unique_ids: whether a repeated id is an error (found here for ``ids``, in
            :meth:`write` for ids that come with the data).
        metadata: small strings for the safetensors header (``model``, ...); ``count``,
            ``dim`` and ``ids_file`` are added.
        where: describes a row in error messages (``"shard x.tar, sample 3"``).
    """

    def __init__(
        self,
        out: str | Path,
        name: str,
        *,
        dim: int,
        capacity: int,
        fmt: str = "npy",
        ids: Sequence[str] | None = None,
        unique_ids: bool = True,
        metadata: Mapping[str, str] | None = None,
        where: Callable[[int], str] | None = None,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be 'npy' or 'safetensors', got {fmt!r}")
        if dim < 1 or capacity < 0:
            raise ValueError(f"need dim >= 1 and capacity >= 0, got {dim} and {capacity}")
        if ids is not None and len(ids) != capacity:
            raise ValueError(f"{len(ids)} ids for {capacity} rows")
        self.dim, self.capacity, self.fmt = dim, capacity, fmt
        self._where = where or (lambda row: f"row {row}")
        if ids is not None and unique_ids:
            check_unique_ids(ids, self._where)
        self._given_ids = ids is not None
        # ids that come with the data are kept by row until close writes them in row order
        self._streamed_ids: list[str | None] = [] if ids is not None else [None] * capacity
        self._ids: Sequence[str | None] = ids if ids is not None else self._streamed_ids
        # ids that come with the data: id -> first row, to name both rows of a duplicate
        self._first_row: dict[str, int] | None = {} if unique_ids and ids is None else None
        self._written = np.zeros(capacity, dtype=bool)
        self._metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self._metadata.update(count=str(capacity), dim=str(dim), ids_file=ids_file_name(name))
        self._row_bytes = 4 * dim
        self._header_size = len(self._header(capacity))
        if fmt == "safetensors" and self._header_size - 8 > _SAFETENSORS_MAX_HEADER:
            raise DataError(f"{name}: the safetensors metadata would take "
                            f"{self._header_size - 8} bytes, over the format's 100 MB")  # fmt: skip
        out = Path(out)
        self.path = out / f"{name}.{fmt}"
        self.ids_path = out / ids_file_name(name)
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._file: Any = None
        size = self._header_size + capacity * self._row_bytes
        try:
            out.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(out).free
            if free < size:
                raise DataError(f"{out}: {name} needs {size:,} bytes, {free:,} are free")
            self._file = open(self._partial, "w+b")  # noqa: SIM115 (closed by close / abort)
            self._file.write(self._header(capacity))
            self._file.truncate(size)
        except OSError as exc:
            self.abort()
            raise DataError(f"{out}: cannot write the embeddings: {exc}") from exc

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self.abort()

    @property
    def count(self) -> int:
        """Rows written so far."""
        return int(self._written.sum())

    def _header(self, rows: int, size: int = 0) -> bytes:
        if self.fmt == "npy":
            return _npy_header(rows, self.dim, size)
        return _safetensors_header(rows, self.dim, {**self._metadata, "count": str(rows)}, size)

    def write(
        self, rows: Sequence[int] | np.ndarray, values: Any, ids: Sequence[str] | None = None
    ) -> None:
        """Write ``values [b, dim]`` at ``rows [b]`` (global positions, any order); ``ids``, one
        per row, when the writer was not given them. A row already written (a sampler's
        padding repeat) is skipped; a repeated id is a :class:`DataError` naming both rows,
        raised before anything of this batch is written."""
        if self._file is None:
            raise ValueError("the writer is closed")
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        values = np.asarray(values)
        if values.shape != (len(rows), self.dim):
            raise ValueError(f"values of shape {values.shape} for {len(rows)} rows of {self.dim}")
        if len(rows) and (ids is None) != self._given_ids:
            raise ValueError("ids come either all at once or with every batch")
        if len(rows) and (rows.min() < 0 or rows.max() >= self.capacity):
            raise ValueError(f"rows outside 0..{self.capacity - 1}")
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        new = ~self._written[rows]
        new[1:] &= rows[1:] != rows[:-1]
        keep = order[new]
        rows = rows[new]
        if ids is not None:
            self._take_ids(rows, [ids[i] for i in keep.tolist()])
        data = np.ascontiguousarray(values[keep], dtype="<f4")
        # one write per run of consecutive rows
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1).tolist() + [len(rows)]
        try:
            for a, b in zip(starts[:-1], starts[1:], strict=True):
                self._file.seek(self._header_size + int(rows[a]) * self._row_bytes)
                self._file.write(data[a:b].data)
        except OSError as exc:  # a full disk, say: bad input to every rank, not a crash of one
            raise DataError(f"{self._partial}: cannot write: {exc}") from exc
        self._written[rows] = True

    def _take_ids(self, rows: np.ndarray, ids: list[str]) -> None:
        if self._first_row is not None:
            batch: dict[str, int] = {}
            for row, key in zip(rows.tolist(), ids, strict=True):
                seen = self._first_row.get(key, batch.get(key))
                if seen is not None:
                    raise DataError(f"duplicate id {key!r} at {self._where(row)}, "
                                    f"first at {self._where(seen)}")  # fmt: skip
                batch[key] = row
            self._first_row.update(batch)
        for row, key in zip(rows.tolist(), ids, strict=True):
            self._streamed_ids[row] = key

    def close(self) -> WrittenEmbeddings:
        """Squeeze out the rows that never came, write the header for the count and the ids
        sidecar, and move both files into place."""
        if self._file is None:
            raise ValueError("the writer is closed")
        kept = np.flatnonzero(self._written)
        if len(kept) < self.capacity:
            self._squeeze(kept)
        self._file.seek(0)
        self._file.write(self._header(len(kept), self._header_size))
        self._file.truncate(self._header_size + len(kept) * self._row_bytes)
        self._file.close()
        self._file = None
        ids_partial = self.ids_path.with_name(self.ids_path.name + ".partial")
        try:
            with open(ids_partial, "w", encoding="utf-8") as f:
                for row in kept.tolist():
                    f.write(json.dumps(self._ids[row], ensure_ascii=False) + "\n")
            os.replace(self._partial, self.path)
            os.replace(ids_partial, self.ids_path)
        except OSError as exc:
            for path in (self._partial, ids_partial):
                path.unlink(missing_ok=True)
            raise DataError(f"{self.path.parent}: cannot write the embeddings: {exc}") from exc
        missing = np.flatnonzero(~self._written).tolist()
        return WrittenEmbeddings(self.path, self.ids_path, len(kept), self.dim, missing)

    def _squeeze(self, kept: np.ndarray) -> None:
        """Move the kept rows down over the gaps, a chunk at a time in row order: a row only
        ever moves to a lower position, so nothing is overwritten before it is read."""
        step = max(1, _COPY_BYTES // self._row_bytes)
        dest = 0
        for start in range(0, self.capacity, step):
            stop = min(start + step, self.capacity)
            mask = self._written[start:stop]
            if not mask.any():
                continue
            self._file.seek(self._header_size + start * self._row_bytes)
            block = np.frombuffer(self._file.read((stop - start) * self._row_bytes), "<f4")
            block = block.reshape(stop - start, self.dim)[mask]
            self._file.seek(self._header_size + dest * self._row_bytes)
            self._file.write(block.data)
            dest += len(block)

    def abort(self) -> None:
        """Close and remove the partial file."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._partial.unlink(missing_ok=True)


def write_embeddings(
    out: str | Path,
    name: str,
    emb: torch.Tensor | np.ndarray,
    ids: Sequence[str],
    fmt: str = "npy",
    *,
    metadata: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write ``emb [N, D]`` (as float32) with its ``ids`` (see the module docstring for the
    files); returns the files written. For embeddings already in memory; a pass streams through
    :class:`EmbeddingWriter`."""
    data = emb.detach().float().cpu().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
    if data.ndim != 2 or data.shape[0] != len(ids):
        raise ValueError(f"{data.shape[0]} embeddings but {len(ids)} ids")
    with EmbeddingWriter(out, name, dim=data.shape[1], capacity=len(ids), fmt=fmt, ids=ids,
                         unique_ids=False, metadata=metadata) as writer:  # fmt: skip
        writer.write(np.arange(len(ids)), data)
        return writer.close().files


def read_embeddings(path: str | Path, *, mmap: bool = False) -> tuple[np.ndarray, list[str]]:
    """``(float32 [N, D], N ids)`` of a ``.npy`` or ``.safetensors`` file of ``cpd embed``.

    The ids come from the sidecar (``<name>_ids.jsonl``, named in a safetensors file's
    metadata) or, for files of older releases, from ``<name>_ids.json`` or the metadata key
    ``"ids"``. ``mmap``: map the array read-only instead of reading it into memory.
    """
    path = Path(path)
    if path.suffix == ".npy":
        try:
            emb = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read embeddings: {exc}") from exc
        sidecar = path.with_name(ids_file_name(path.stem))
        ids = (_read_ids_jsonl(sidecar) if sidecar.is_file()
               else _read_ids_json(path.with_name(f"{path.stem}_ids.json")))  # fmt: skip
    elif path.suffix == ".safetensors":
        emb, metadata = _read_safetensors(path, mmap)
        if "ids_file" in metadata:
            ids = _read_ids_jsonl(path.with_name(metadata["ids_file"]))
        elif "ids" in metadata:
            ids = _parse_ids(metadata["ids"], f"{path}: metadata 'ids'")
        else:
            raise DataError(f"{path}: no ids (neither 'ids_file' nor 'ids' in the metadata)")
    else:
        raise DataError(f"{path}: not a .npy or .safetensors file")
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise DataError(f"{path}: {emb.shape[0]} rows but {len(ids)} ids")
    return emb, ids


def _read_ids_jsonl(path: Path) -> list[str]:
    ids = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                ids.append(_parse_id(line, f"{path}: line {number}"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the ids: {exc}") from exc
    return ids


def _parse_id(text: str, where: str) -> str:
    try:
        key = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not JSON: {exc}") from exc
    if not isinstance(key, str):
        raise DataError(f"{where}: an id must be a JSON string")
    return key


def _read_ids_json(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the ids: {exc}") from exc
    return _parse_ids(text, str(path))


def _parse_ids(text: str, where: str) -> list[str]:
    try:
        ids = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not JSON: {exc}") from exc
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataError(f"{where}: not a JSON list of strings")
    return ids


def _read_safetensors(path: Path, mmap: bool) -> tuple[np.ndarray, dict[str, str]]:
    """The tensor ``"embeddings"`` (float32 ``[N, D]``) and the metadata of a safetensors file."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > _SAFETENSORS_MAX_HEADER:
                raise DataError(f"{path}: a header of {size} bytes, over the format's 100 MB")
            head = json.loads(f.read(size))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the safetensors header: {exc}") from exc
    info = head.get("embeddings")
    if not isinstance(info, dict) or info.get("dtype") != "F32" or len(info.get("shape", ())) != 2:
        raise DataError(f"{path}: no float32 [N, D] tensor 'embeddings'")
    rows, dim = info["shape"]
    offset = 8 + size + int(info["data_offsets"][0])
    try:
        if mmap:
            emb = np.memmap(path, dtype="<f4", mode="r", offset=offset, shape=(rows, dim))
        else:
            emb = np.fromfile(path, dtype="<f4", count=rows * dim, offset=offset)
            emb = emb.reshape(rows, dim)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read embeddings: {exc}") from exc
    return emb, dict(head.get("__metadata__") or {})
