"""What loose-file and shard preparation share: the job, the part of a job list a machine
takes, one video prepared in a worker, the worker pool, and the run's bookkeeping.

:mod:`cpd.data.prepare` (inputs, loose files) and :mod:`cpd.data.prepare_shards` (webdataset
shards) both build on this module; it imports neither of them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cpd.data.manifests import INSTAGRAM_FILE_PATTERN
from cpd.errors import DataError, VideoDecodeError
from cpd.video.transcode import PrepareSettings, transcode


@dataclass(frozen=True)
class PrepareJob:
    """One source video and the caption rows that refer to it."""

    video_id: str
    source: str
    # (caption, split, id or None) per row; empty when the input gave no caption
    captions: tuple[tuple[str, str, str | None], ...] = ()
    missing_reason: str | None = None  # set when the source could not be located

    @property
    def output_name(self) -> str:
        return INSTAGRAM_FILE_PATTERN.format(self.video_id)


@dataclass(frozen=True)
class WorkPart:
    """Part ``index`` (0-based) of ``count`` parts of one job list (``--part I/N``)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise DataError(f"part must be I/N with 0 <= I < N, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> WorkPart:
        """``"I/N"`` -> ``WorkPart(I, N)``; :class:`DataError` for anything else."""
        index, sep, count = text.partition("/")
        if not (sep and index.strip().isdigit() and count.strip().isdigit()):
            raise DataError(f"part must be I/N (e.g. 0/4: the first of four), got {text!r}")
        return cls(int(index), int(count))

    def owns(self, number: int) -> bool:
        """Whether job (or shard) ``number`` belongs to this part."""
        return number % self.count == self.index

    def file_name(self, stem: str, suffix: str) -> str:
        """``failures.jsonl`` for a whole run, ``failures.part-0-of-2.jsonl`` for a part."""
        if self.count == 1:
            return f"{stem}{suffix}"
        return f"{stem}.part-{self.index}-of-{self.count}{suffix}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _is_complete(path: Path) -> bool:
    """An earlier output that opens and holds frames (ours are renamed only when finished)."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            video = container.streams.video
            return bool(video) and video[0].frames > 0
    except (av.FFmpegError, OSError):
        return False


def _run_job(task: tuple[int, PrepareJob, str, PrepareSettings, bool]) -> dict[str, Any]:
    """Prepare one video into the path ``task[2]`` in a worker; every outcome (bugs included)
    comes back as a dict, with the wall-clock times it started and finished."""
    started = time.time()
    return {**_prepare_one(task), "started": started, "finished": time.time()}


def _prepare_one(task: tuple[int, PrepareJob, str, PrepareSettings, bool]) -> dict[str, Any]:
    """The outcome of one task of :func:`_run_job`: done, skipped or failed with a reason."""
    number, job, dest_path, settings, force = task
    result: dict[str, Any] = {"number": number, "id": job.video_id, "path": job.source}
    dest = Path(dest_path)
    if job.missing_reason is not None:
        return {**result, "status": "failed", "kind": "input", "reason": job.missing_reason}
    if not force and dest.exists() and _is_complete(dest):
        return {**result, "status": "skipped"}
    tmp = dest.with_name(dest.name + ".partial")
    try:
        info = transcode(job.source, tmp, settings)
        os.replace(tmp, dest)
        return {**result, "status": "done", "bytes": dest.stat().st_size, **info}
    except VideoDecodeError as exc:
        return {**result, "status": "failed", "kind": "input", "reason": exc.reason}
    except Exception as exc:  # noqa: BLE001 -- reported as a bug (kind "internal"), not bad data
        reason = f"internal error: {type(exc).__name__}: {exc}"
        return {**result, "status": "failed", "kind": "internal", "reason": reason,
                "traceback": traceback.format_exc()}  # fmt: skip
    finally:
        tmp.unlink(missing_ok=True)


def _settings_record(settings: PrepareSettings) -> dict[str, Any]:
    return asdict(settings)


def _check_previous(out: Path, settings: PrepareSettings, force: bool) -> None:
    """Refuse to mix outputs of different settings in one OUT (unless ``force`` redoes all).

    Every earlier summary counts, ``results.json`` and those of parts (``results.part-*``).
    """
    if force:
        return
    for previous in sorted(out.glob("results*.json")):
        try:
            before = json.loads(previous.read_text(encoding="utf-8")).get("settings")
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            raise DataError(f"{previous}: unreadable results of an earlier run: {exc}") from exc
        if before is not None and before != _settings_record(settings):
            raise DataError(
                f"{out} was prepared with other settings {before} ({previous.name}); use force "
                "to redo every video, or another output directory"
            )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _reason_counts(failures: list[dict[str, Any]]) -> dict[str, int]:
    """Failures per reason, FFmpeg's details cut off (``cannot open: ...`` -> ``cannot open``)."""
    counts: dict[str, int] = {}
    for f in failures:
        key = f["reason"].split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _outcomes(
    tasks: list,
    workers: int,
    progress: bool,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the tasks (in this process when ``workers <= 1``) behind a progress bar.

    ``on_result`` sees each outcome as it arrives (in completion order), so that finished
    work can be stored before the whole run ends.
    """
    from tqdm import tqdm

    counts = {"done": 0, "skipped": 0, "failed": 0}
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(tasks), desc="prepare", unit="video", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)  # fmt: skip

    def collect(outcomes: Iterable[dict[str, Any]]) -> None:
        for outcome in outcomes:
            results.append(outcome)
            if on_result is not None:
                on_result(outcome)
            counts[outcome["status"]] += 1
            bar.set_postfix(counts, refresh=False)
            bar.update()

    try:
        if workers <= 1 or len(tasks) <= 1:
            collect(map(_run_job, tasks))
        else:
            collect(_in_pool(tasks, workers))
    finally:
        bar.close()
    return sorted(results, key=lambda r: r["number"])


def _in_pool(
    tasks: list, workers: int, run: Callable[[tuple], dict[str, Any]] = _run_job
) -> Iterator[dict[str, Any]]:
    """Outcomes of ``tasks`` from worker processes, surviving workers that die.

    FFmpeg may crash (a segfault) on a malformed web video, which kills its worker and breaks
    the pool. At most ``workers`` tasks are in flight, so when that happens the suspects are
    few: each is rerun alone in a fresh process, the one that dies again is reported failed
    (``worker process crashed``), and a new pool takes the rest.
    """
    # spawn, not fork: the caller may hold threads (torch, tqdm) that fork would copy
    context = multiprocessing.get_context("spawn")
    queue = list(reversed(tasks))
    while queue:
        suspects: list[tuple] = []
        with ProcessPoolExecutor(min(workers, len(queue)), mp_context=context) as pool:
            running: dict[Future, tuple] = {}
            while queue or running:
                while queue and len(running) < workers:
                    task = queue.pop()
                    running[pool.submit(run, task)] = task
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    task = running.pop(future)
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        suspects.append(task)
                if suspects:
                    suspects += running.values()
                    break
        for task in sorted(suspects, key=lambda t: t[0]):
            yield _alone(task, context, run)


def _alone(task: tuple, context: Any, run: Callable[[tuple], dict[str, Any]]) -> dict[str, Any]:
    """Run one task in a process of its own; a crash is that input's failure."""
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        try:
            return pool.submit(run, task).result()
        except BrokenProcessPool:
            number, job = task[0], task[1]
            return {"number": number, "id": job.video_id, "path": job.source,
                    "status": "failed", "kind": "input", "reason": "worker process crashed"}  # fmt: skip
