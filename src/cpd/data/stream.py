"""Streaming video-caption pairs from tar shards: the epoch plan and the iterable dataset.

The plan of an epoch is a pure function of (seed, epoch, world size, workers per rank, batch
size) and the shard index:

1. Shard order: shuffled from (seed, epoch) when training, the spec's order otherwise. The
   complete samples of the shards in that order form the epoch's sequence.
2. Ranks: training gives each rank ``N // world`` consecutive samples of the sequence, of which
   it keeps whole batches (the same number of steps on every rank; what is left, fewer than
   ``world x batch`` samples, changes with the shard order every epoch); evaluation gives every
   sample to exactly one rank (contiguous, near-equal parts).
3. Workers: each DataLoader worker takes a contiguous run of its rank's batches (earlier
   workers one more when they do not divide) and reads its part of the sequence
   sequentially, shard after shard, never seeking. Training shuffles inside that part with a
   shuffle buffer (``buffer`` samples, generator from (seed, epoch, rank, worker)); the order
   is computed from positions alone, before any byte is read.

A DataLoader hands out the workers' batches in turn (worker 0, 1, ..., 0, 1, ...), so the
epoch's batch sequence is known in advance. A run resumed after ``s`` batches of an epoch gives
the remaining batches to the workers so that the turn order yields exactly the batches the
uninterrupted run would have yielded next: no sample is replayed, none is lost, and each
worker still reads forward only (positions already consumed are skipped without decoding).

Each sample carries its global row (:class:`~cpd.data.shards.ShardIndex`) as ``index``, and its
clip is drawn from ``(seed, epoch, row)``: the clip a manifest dataset gives for the same row.

Failures (under :class:`~cpd.data.datasets.FailurePolicy`, as manifest datasets): a sample whose
video does not decode, whose caption is missing or whose shard ends early is logged, counted and
replaced by another whole sample of the same worker (one of the last good ones, drawn from
(seed, epoch, row)), so batch counts, and so the steps of every rank, stay as planned. In
evaluation nothing is replaced: the sample is skipped and counted.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from cpd.data.datasets import FailurePolicy, _padded_backend, default_tokenizer, derive_seed
from cpd.data.shards import RawSample, ShardIndex, iter_shard
from cpd.errors import DataError, VideoDecodeError

__all__ = [
    "ShardDataset",
    "StreamFailures",
    "WorkerPlan",
    "plan_epoch",
    "resume_assignment",
    "shard_records",
    "worker_bounds",
]

log = logging.getLogger("cpd.data")

_SHARD_STREAM = 21
_BUFFER_STREAM = 22
_RESERVOIR = 16  # recent good samples a worker keeps to replace a bad one


@dataclass(frozen=True)
class Segment:
    """Positions ``[first, stop)`` of shard number ``shard``; ``start`` is where they begin in
    the worker's part of the sequence."""

    shard: int
    first: int
    stop: int
    start: int


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's part of a rank's epoch: segments to read, yield order, batch size."""

    segments: tuple[Segment, ...]
    order: tuple[int, ...]  # positions in yield order (a permutation of range(size))
    batch_size: int

    def segment(self, position: int) -> Segment:
        """The segment holding ``position`` (a binary search over the segments' starts)."""
        k = bisect.bisect_right([seg.start for seg in self.segments], position) - 1
        seg = self.segments[k] if k >= 0 else None
        if seg is None or position >= seg.start + seg.stop - seg.first:
            raise IndexError(position)
        return seg

    @property
    def size(self) -> int:
        return len(self.order)

    @property
    def num_batches(self) -> int:
        return -(-self.size // self.batch_size)

    def batch_positions(self, batch: int) -> tuple[int, ...]:
        """The positions of this worker's ``batch``-th batch."""
        return self.order[batch * self.batch_size : (batch + 1) * self.batch_size]


def _shard_order(index: ShardIndex, seed: int, epoch: int, shuffle: bool) -> list[int]:
    n = len(index.urls)
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(derive_seed(seed, epoch, 0, _SHARD_STREAM))
    return torch.randperm(n, generator=g).tolist()


def _segments(
    index: ShardIndex, order: Sequence[int], start: int, stop: int
) -> tuple[Segment, ...]:
    """Positions ``[start, stop)`` of the epoch's sequence as per-shard segments."""
    out, offset = [], 0
    for shard in order:
        count = index.counts[shard]
        lo, hi = max(start, offset), min(stop, offset + count)
        if lo < hi:
            out.append(Segment(shard, lo - offset, hi - offset, lo - start))
        offset += count
        if offset >= stop:
            break
    return tuple(out)


def _buffer_order(size: int, buffer: int, generator: np.random.Generator) -> tuple[int, ...]:
    """The order in which a shuffle buffer of ``buffer`` slots emits positions ``0..size-1``
    read in order: each new position takes the slot of a uniformly drawn one, which goes out."""
    if buffer <= 1:
        return tuple(range(size))
    slots = list(range(min(buffer, size)))
    draws = generator.integers(0, len(slots), size=max(size - len(slots), 0))
    out = []
    for incoming, j in zip(range(len(slots), size), draws.tolist(), strict=True):
        out.append(slots[j])
        slots[j] = incoming
    out.extend(slots[i] for i in generator.permutation(len(slots)).tolist())
    return tuple(out)


def worker_bounds(
    total: int, *, rank: int, world_size: int, workers: int, batch_size: int, train: bool
) -> list[int]:
    """Where each worker's part of this rank's share begins and ends in the epoch's sequence
    (``workers + 1`` offsets): arithmetic only, cheap at any N."""
    workers = max(workers, 1)
    if train:
        share = total // world_size
        batches = share // batch_size
        # whole batches per worker, earlier workers one more where they do not divide
        per = [batches // workers + (1 if w < batches % workers else 0) for w in range(workers)]
        bounds = [rank * share]
        for n in per:
            bounds.append(bounds[-1] + n * batch_size)
        return bounds
    lo, hi = total * rank // world_size, total * (rank + 1) // world_size
    return [lo + (hi - lo) * w // workers for w in range(workers + 1)]


def plan_epoch(
    index: ShardIndex, *, seed: int, epoch: int, rank: int, world_size: int, workers: int,
    batch_size: int, train: bool, buffer: int = 256, only: Sequence[int] | None = None,
) -> dict[int, WorkerPlan]:  # fmt: skip
    """The plans of this rank's workers for one epoch (see the module docstring); ``only``:
    just those workers (each worker computes its own plan, not all of them)."""
    order = _shard_order(index, seed, epoch, shuffle=train)
    bounds = worker_bounds(index.total, rank=rank, world_size=world_size, workers=workers,
                           batch_size=batch_size, train=train)  # fmt: skip
    plans = {}
    for w in range(len(bounds) - 1) if only is None else only:
        start, stop = bounds[w], bounds[w + 1]
        size = stop - start
        if train:
            g = np.random.Generator(
                np.random.PCG64(derive_seed(seed, epoch, rank * 4096 + w, _BUFFER_STREAM))
            )
            yield_order = _buffer_order(size, buffer, g)
        else:
            yield_order = tuple(range(size))
        plans[w] = WorkerPlan(_segments(index, order, start, stop), yield_order, batch_size)
    return plans


def resume_assignment(batch_counts: Sequence[int], skip: int) -> list[list[tuple[int, int]]]:
    """Which (planned worker, batch) each DataLoader worker yields after ``skip`` batches.

    A DataLoader takes batches from its workers in turn, skipping exhausted ones; with counts
    that never increase with the worker number, batch ``j`` of the epoch is therefore the
    ``j``-th of: round 0 of every worker, round 1 of every worker, ... Dealing the batches left
    after ``skip`` to the workers in the same turn order makes the DataLoader yield them in the
    planned order.
    """
    workers = len(batch_counts)
    sequence = [(w, r) for r in range(max(batch_counts, default=0)) for w in range(workers)
                if r < batch_counts[w]]  # fmt: skip
    left = sequence[skip:]
    return [left[w::workers] for w in range(workers)]


def _tokenize_one(
    backend: Any, tokenizer: Any, caption: str, max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend is not None:
        enc = backend.encode(caption)
        return torch.tensor(enc.ids, dtype=torch.int64), torch.tensor(
            enc.attention_mask, dtype=torch.int64
        )
    enc = tokenizer(caption, padding="max_length", truncation=True, max_length=max_tokens,
                    return_tensors="pt")  # fmt: skip
    return enc["input_ids"][0].long(), enc["attention_mask"][0].long()


class StreamFailures(FailurePolicy):
    """The failure policy of a stream: samples come once an epoch, so good ones are counted,
    not remembered by name (10M names would take a gigabyte)."""

    counted = "samples read in this process failed"

    def __init__(self, max_failure_ratio: float = 0.05, min_failures: int = 5) -> None:
        super().__init__(max_failure_ratio, min_failures)
        self.loaded = 0

    def ok(self, path: str) -> None:
        """Count a successful load."""
        self.loaded += 1

    def counts(self) -> tuple[int, int]:
        """``(n_failed, n_seen)``: the failed samples and all samples read."""
        return len(self.failed), len(self.failed) + self.loaded


class ShardDataset(IterableDataset):
    """Video-caption pairs streamed from shards; see the module docstring.

    Samples are ``{"video": float [3, T, S, S], "input_ids": int64 [L], "attention_mask":
    int64 [L], "index": int (the global row), "caption": str, "key": str}``, as
    :class:`~cpd.data.datasets.VideoCaptionDataset` gives plus the sample's key. Before
    iterating, :meth:`configure` says which epoch, rank, batch size and workers to plan for,
    and how many of the epoch's batches are done (a resumed run).
    """

    def __init__(
        self,
        index: ShardIndex,
        tokenizer: Any = None,
        *,
        num_frames: int = 8,
        stride: int = 4,
        crop_size: int = 112,
        train: bool = True,
        hflip: float = 0.5,
        scale_range: tuple[int, int] | None = None,
        seed: int = 0,
        max_tokens: int = 64,
        max_failure_ratio: float = 0.05,
        min_failures: int = 5,
        buffer: int = 256,
        caption_key: str = "caption",
        loader: Callable[..., torch.Tensor] | None = None,
        official_tokens: bool = False,
    ) -> None:
        self.index = index
        self.tokenizer = default_tokenizer() if tokenizer is None else tokenizer
        self.train = train
        self.seed = int(seed)
        self.max_tokens = max_tokens
        self.official_tokens = official_tokens  # see tokenize_captions(official=True)
        self.buffer = buffer
        self.caption_key = caption_key
        self.policy = StreamFailures(max_failure_ratio, min_failures)
        self.clip_args = dict(num_frames=num_frames, stride=stride, crop_size=crop_size,
                              train=train, hflip=hflip, scale_range=scale_range)  # fmt: skip
        if loader is None:
            from cpd.video import load_clip as loader
        self.loader = loader
        self.epoch, self.rank, self.world_size, self.workers = 0, 0, 1, 1
        self.batch_size, self.skip_batches = 1, 0
        self.skipped: list[tuple[int, str]] = []  # evaluation: (row, reason) of skipped samples
        self._backend: Any = None

    def __len__(self) -> int:
        """All complete samples of the shards (the memory bank's rows)."""
        return self.index.total

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; the plan and the clips depend on it."""
        self.epoch = int(epoch)

    def configure(self, *, epoch: int, rank: int, world_size: int, workers: int,
                  batch_size: int, skip_batches: int = 0) -> None:  # fmt: skip
        """Set what the next iteration plans for (see the module docstring)."""
        self.epoch, self.rank, self.world_size = int(epoch), int(rank), int(world_size)
        self.workers, self.batch_size = max(int(workers), 1), int(batch_size)
        self.skip_batches = int(skip_batches)

    def plans(self, only: Sequence[int] | None = None) -> dict[int, WorkerPlan]:
        """This rank's worker plans for the configured epoch (``only``: those workers)."""
        return plan_epoch(self.index, seed=self.seed, epoch=self.epoch, rank=self.rank,
                          world_size=self.world_size, workers=self.workers,
                          batch_size=self.batch_size, train=self.train, buffer=self.buffer,
                          only=only)  # fmt: skip

    def plan_settings(self, *, world_size: int, workers: int, batch_size: int) -> dict[str, Any]:
        """What the epoch plan depends on besides (seed, epoch): a mid-epoch resume is exact
        only when these are unchanged."""
        digest = hashlib.sha1(json.dumps([self.index.urls, self.index.counts]).encode())
        return {"world_size": world_size, "workers": max(workers, 1),
                "batch_per_rank": batch_size, "shuffle_buffer": self.buffer,
                "rows": self.index.total, "index_sha1": digest.hexdigest()}  # fmt: skip

    def batches_per_epoch(self, world_size: int, batch_size: int) -> int:
        """Training batches each rank runs per epoch."""
        return (self.index.total // world_size) // batch_size

    # -- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != self.workers:
            raise RuntimeError(
                f"ShardDataset planned for {self.workers} workers but runs in {workers}: "
                "call configure(workers=...) with the DataLoader's num_workers"
            )
        self.skipped = []
        bounds = worker_bounds(self.index.total, rank=self.rank, world_size=self.world_size,
                               workers=workers, batch_size=self.batch_size, train=self.train)  # fmt: skip
        counts = [
            -(-(hi - lo) // self.batch_size) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        items = resume_assignment(counts, self.skip_batches)[worker]
        plans = self.plans(only=sorted({planned for planned, _ in items}))
        # runs of consecutive batches of the same planned worker are read in one pass
        run: list[int] = []
        for i, (planned, batch) in enumerate(items):
            run.append(batch)
            if i + 1 == len(items) or items[i + 1][0] != planned:
                needed = [p for b in run for p in plans[planned].batch_positions(b)]
                yield from self._samples(plans[planned], needed)
                run = []

    def _samples(self, plan: WorkerPlan, needed: list[int]) -> Iterator[dict[str, Any]]:
        """The samples at ``needed`` positions of ``plan``, in that order, whole batches."""
        stash: dict[int, RawSample] = {}
        recent: deque[RawSample] = deque(maxlen=_RESERVOIR)
        reader = self._read(plan, needed)
        last = -1  # the reader yields positions in increasing order: the last one read
        in_batch: set[str] = set()  # names yielded in the current batch
        batch: set[int] = set()  # positions of the current batch
        for n, position in enumerate(needed):
            if n % self.batch_size == 0:
                in_batch, batch = set(), set(needed[n : n + self.batch_size])
            # read on until the position arrives or the reader has passed it (a sample that
            # never comes must not pull the rest of the part into memory)
            while position not in stash and last < position:
                got = next(reader, None)
                if got is None:
                    break
                last = got[0]
                stash[got[0]] = got[1]
            raw = stash.pop(position, None)
            row = self._row(plan, position)
            if raw is not None:
                try:
                    sample = self._load(raw, row)
                except VideoDecodeError as exc:
                    self.policy.fail(exc, exc.path)
                else:
                    self.policy.ok(self._name(raw))
                    recent.append(raw)
                    in_batch.add(self._name(raw))
                    yield sample
                    continue
            else:
                seg = plan.segment(position)
                name = f"{self.index.urls[seg.shard]}#{seg.first + position - seg.start}"
                self.policy.fail(VideoDecodeError(name, "sample missing from its shard"), name)
            if not self.train:
                self.skipped.append((row, "failed"))
                continue
            sample = self._replacement(recent, stash, reader, row, in_batch, batch)
            in_batch.add(sample.pop("name"))
            yield sample

    def _replacement(self, recent: deque[RawSample], stash: dict[int, RawSample],
                     reader: Iterator[tuple[int, RawSample]], row: int, in_batch: set[str],
                     batch: set[int]) -> dict[str, Any]:  # fmt: skip
        """Another whole sample: one of the worker's recent good ones that is not in this
        batch (a twin in one batch is a false negative), drawn from (seed, epoch, row); one
        read ahead when there is none."""
        rng = np.random.Generator(np.random.PCG64(derive_seed(self.seed, self.epoch, row, 1)))
        pool = list(recent) + [stash[p] for p in sorted(stash) if p not in batch]
        tried: set[str] = set(in_batch)
        while True:
            candidates = [r for r in pool if self._name(r) not in tried]
            if not candidates:
                got = next(reader, None)
                if got is None:
                    raise DataError(
                        f"no sample could replace row {row}: nothing left to read in this "
                        f"worker's shards ({len(self.policy.failed)} failed in this process)"
                    )
                stash[got[0]] = got[1]
                if got[0] not in batch:
                    pool.append(got[1])
                continue
            raw = candidates[int(rng.integers(len(candidates)))]
            tried.add(self._name(raw))
            try:
                sample = self._load(raw, self.index.row(raw.shard, raw.position))
            except VideoDecodeError as exc:
                self.policy.fail(exc, exc.path)
            else:
                return {**sample, "name": self._name(raw)}

    def _read(self, plan: WorkerPlan, needed: list[int]) -> Iterator[tuple[int, RawSample]]:
        """``(position, sample)`` for the needed positions, in increasing position order,
        reading the segments in order and skipping those with nothing needed."""
        wanted = set(needed)
        ordered = sorted(wanted)
        for seg in plan.segments:
            lo, hi = seg.start, seg.start + (seg.stop - seg.first)
            k = bisect.bisect_left(ordered, lo)
            if k == len(ordered) or ordered[k] >= hi:
                continue

            def want(pos: int, seg: Segment = seg) -> bool:
                return seg.first <= pos < seg.stop and seg.start + pos - seg.first in wanted

            url = self.index.urls[seg.shard]
            for raw in iter_shard(url, seg.shard, want, on_error=log.warning, stop=seg.stop,
                                  table_dirs=self.index.table_dirs):  # fmt: skip
                yield seg.start + raw.position - seg.first, raw

    def _row(self, plan: WorkerPlan, position: int) -> int:
        seg = plan.segment(position)
        return self.index.row(seg.shard, seg.first + position - seg.start)

    def _length(self) -> int:
        return self.max_tokens + (1 if self.official_tokens else 0)

    def _name(self, raw: RawSample) -> str:
        return f"{self.index.urls[raw.shard]}#{raw.key}"

    def _load(self, raw: RawSample, row: int) -> dict[str, Any]:
        name = self._name(raw)
        caption = raw.caption(self.caption_key)
        if caption is None:
            raise VideoDecodeError(name, "no caption (.txt, or .json field "
                                         f"{self.caption_key!r})")  # fmt: skip
        seed = derive_seed(self.seed, self.epoch, row)
        video = self.loader(raw.video_source(name), seed=seed, **self.clip_args)
        if self._backend is None:
            self._backend = _padded_backend(self.tokenizer, self._length()) or False
        ids, mask = _tokenize_one(self._backend or None, self.tokenizer, caption, self._length())
        ids, mask = ids[: self.max_tokens], mask[: self.max_tokens]
        return {"video": video, "input_ids": ids, "attention_mask": mask, "index": row,
                "caption": caption, "key": raw.key}  # fmt: skip


def shard_records(index: ShardIndex, caption_key: str = "caption") -> tuple[list[Any], list[Any]]:
    """Every row of the shards read once, for the frame cache: ``(records, videos)``.

    ``records[r]`` is row ``r`` as a :class:`~cpd.data.manifests.CaptionRecord` whose ``path`` is
    the sample's name (``shard#key``), ``videos`` the sources (:class:`~cpd.video.VideoSlice` or
    :class:`~cpd.video.VideoBytes`) to fill a :class:`~cpd.data.cache.FrameCache` with, under
    those names. A row that cannot be read (its shard ends early, its caption is missing)
    keeps a record whose video is absent, so the dataset's failure policy replaces it like any
    video that does not decode.
    """
    from cpd.data.manifests import CaptionRecord

    records: list[Any] = [None] * index.total
    videos = []
    for shard, url in enumerate(index.urls):
        for raw in iter_shard(url, shard, on_error=log.warning, stop=index.counts[shard],
                              table_dirs=index.table_dirs):  # fmt: skip
            row = index.row(shard, raw.position)
            name = f"{url}#{raw.key}"
            caption = raw.caption(caption_key)
            if caption is None:
                log.warning("%s: no caption (.txt, or .json field %r)", name, caption_key)
                continue
            records[row] = CaptionRecord(row, raw.key, name, caption, None)
            videos.append(raw.video_source(name))
    for row, record in enumerate(records):
        if record is None:
            records[row] = CaptionRecord(row, f"row{row}", f"missing#row{row}", "", None)
    return records, videos
