"""The paper's preprocessing of web videos: middle 20 s, short side 256, H.264 (``cpd prepare``).

Each source video is cut to the middle ``seconds`` of its timeline (kept whole when shorter),
resized so that its short side is ``short_side`` and re-encoded as H.264 mp4 (yuv420p, even
dimensions, a keyframe every ``keyframe_seconds``, audio dropped) at
``OUT/videos/trimmed_resize_{id}.mp4``, the file name of the official Instagram-300k release.

How one video is cut and scaled: :mod:`cpd.video.transcode`.

Runs. Work goes to ``name.partial`` and is renamed when complete, so an interrupted run never
leaves a file that a later run would take for done; a rerun skips outputs that exist and open.
Every input ends in exactly one of done / skipped / failed; failures are listed with reasons in
``OUT/failures.jsonl``, and ``OUT/captions.jsonl`` pairs each prepared video with its
caption(s) for ``cpd pretrain data.manifest=OUT/captions.jsonl``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import posixpath
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from glob import glob, has_magic
from pathlib import Path
from typing import Any

from cpd.data.manifests import (
    INSTAGRAM_FILE_PATTERN,
    CaptionRecord,
    read_caption_manifest,
    read_instagram_json,
)
from cpd.errors import DataError, VideoDecodeError
from cpd.video.transcode import PrepareSettings, transcode

__all__ = [
    "PrepareJob",
    "PrepareSettings",
    "jobs_from_manifest",
    "jobs_from_paths",
    "prepare_videos",
    "transcode",
]

# what a directory input picks up
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".wmv",
                            ".mpg", ".mpeg", ".ts", ".3gp", ".ogv"})  # fmt: skip
DEFAULT_SPLIT = "train"  # pairs whose input names no split (pretraining reads "train")


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


# --- inputs --------------------------------------------------------------------------------


def _safe_id(video_id: str) -> str:
    """An id usable in a file name: path separators of manifest-derived ids become ``__``."""
    return video_id.replace("\\", "/").strip("/").replace("/", "__")


def _check_unique(jobs: list[PrepareJob]) -> list[PrepareJob]:
    seen: dict[str, str] = {}
    for job in jobs:
        if job.output_name in seen:
            raise DataError(
                f"videos {seen[job.output_name]!r} and {job.source!r} would both be written "
                f"as {job.output_name}: ids must be unique"
            )
        seen[job.output_name] = job.source
    return jobs


def jobs_from_manifest(
    manifest: str | Path, video_dir: str | Path | None = None, format: str | None = None
) -> list[PrepareJob]:
    """Jobs from a caption manifest (the reader is chosen as in ``read_caption_manifest``).

    Instagram JSON: sources are ``video_dir/{id}.*`` (or ``trimmed_resize_{id}.*``); an id with
    no such file becomes a job that fails as a missing file. JSONL/CSV: ``video`` paths are
    relative to ``video_dir`` (default: the manifest's folder); rows naming the same video
    share one job.
    """
    manifest = Path(manifest)
    kind = format or {".json": "instagram"}.get(manifest.suffix.lower())
    if kind == "instagram":
        if video_dir is None:
            raise DataError(f"{manifest}: an Instagram JSON manifest needs the video directory")
        records = read_instagram_json(manifest, video_dir)
        stems = _index_dir(Path(video_dir))
        jobs = []
        for r in records:
            found = stems.get(r.video_id) or stems.get(f"trimmed_resize_{r.video_id}")
            row = ((r.caption, r.split or DEFAULT_SPLIT, r.video_id),)
            if found is not None and len(found) == 1:
                jobs.append(PrepareJob(r.video_id, found[0], row))
            else:
                why = "no such file" if not found else f"several candidates: {', '.join(found)}"
                source = os.path.join(video_dir, f"{r.video_id}.*")
                jobs.append(PrepareJob(r.video_id, source, row, missing_reason=why))
        return _check_unique(jobs)
    root = Path(video_dir) if video_dir is not None else manifest.parent
    by_source: dict[str, list[CaptionRecord]] = {}
    for r in read_caption_manifest(manifest, root, None, format):
        by_source.setdefault(r.path, []).append(r)
    jobs = []
    for source, rows in by_source.items():
        ids = [r.video_id for r in rows]
        # several captions of one video without ids of their own share the video's id; the
        # caption manifest we write must then leave ids out (it rejects repeated ones)
        row_ids = ids if len(set(ids)) == len(ids) else [None] * len(ids)
        captions = tuple(
            (r.caption, r.split or DEFAULT_SPLIT, i) for r, i in zip(rows, row_ids, strict=True)
        )
        jobs.append(PrepareJob(_safe_id(rows[0].video_id), source, captions))
    return _check_unique(jobs)


def _index_dir(folder: Path) -> dict[str, list[str]]:
    """Stem -> files in ``folder`` (one listing, not one glob per id: 300k ids)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: video directory not found")
    stems: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file() and not entry.name.endswith(".partial"):
            stems.setdefault(os.path.splitext(entry.name)[0], []).append(entry.path)
    return stems


def _expand(inputs: Sequence[str | Path]) -> list[str]:
    """Directories -> their video files (sorted), globs -> matches, files kept as given."""
    paths: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        if os.path.isdir(text):
            files = sorted(e.path for e in os.scandir(text) if e.is_file())
            paths += [f for f in files if os.path.splitext(f)[1].lower() in VIDEO_SUFFIXES]
        elif has_magic(text):
            matches = sorted(glob(text, recursive=True))
            if not matches:
                raise DataError(f"{text}: the pattern matches no file")
            paths += [m for m in matches if os.path.isfile(m)]
        else:
            paths.append(text)  # a missing file is a failure of its own, not a bad argument
    return list(dict.fromkeys(paths))


def _read_captions(path: Path) -> dict[str, list[tuple[str, str, str | None]]]:
    """Captions keyed by file stem: Instagram JSON ids, or a JSONL/CSV manifest's id / video."""
    records = read_caption_manifest(path, path.parent)
    out: dict[str, list[tuple[str, str, str | None]]] = {}
    for r in records:
        # an explicit id, or the manifest's video path without suffix: its last part is the stem
        key = posixpath.basename(r.video_id.replace("\\", "/"))
        out.setdefault(key, []).append((r.caption, r.split or DEFAULT_SPLIT, None))
    return out


def jobs_from_paths(
    inputs: Sequence[str | Path], captions: str | Path | None = None
) -> list[PrepareJob]:
    """Jobs from video files, directories or glob patterns; ids are file stems.

    ``captions`` (optional) pairs ids with captions: the Instagram JSON, or a JSONL/CSV caption
    manifest (``video``, ``caption`` [, ``split``, ``id``]) whose ``id``, else the stem of its
    ``video``, names the file stem. Videos without a caption are still prepared but left out
    of ``captions.jsonl``.
    """
    table = _read_captions(Path(captions)) if captions is not None else {}
    jobs = []
    for path in _expand(inputs):
        video_id = Path(path).stem
        rows = table.get(video_id, [])
        single = len(rows) == 1
        rows_out = tuple((c, s, video_id if single else None) for c, s, _ in rows)
        jobs.append(PrepareJob(video_id, path, rows_out))
    return _check_unique(jobs)


# --- a whole run -----------------------------------------------------------------------------


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
    """Prepare one video in a worker; every outcome (bugs included) comes back as a dict."""
    number, job, videos_dir, settings, force = task
    result: dict[str, Any] = {"number": number, "id": job.video_id, "path": job.source}
    dest = Path(videos_dir) / job.output_name
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
    """Refuse to mix outputs of different settings in one OUT (unless ``force`` redoes all)."""
    previous = out / "results.json"
    if force or not previous.is_file():
        return
    try:
        before = json.loads(previous.read_text(encoding="utf-8")).get("settings")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise DataError(f"{previous}: unreadable results of an earlier run: {exc}") from exc
    if before is not None and before != _settings_record(settings):
        raise DataError(
            f"{out} was prepared with other settings {before}; use force to redo every video, "
            "or another output directory"
        )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _outcomes(tasks: list, workers: int, progress: bool) -> list[dict[str, Any]]:
    """Run the tasks (in this process when ``workers <= 1``) behind a progress bar."""
    from tqdm import tqdm

    counts = {"done": 0, "skipped": 0, "failed": 0}
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(tasks), desc="prepare", unit="video", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)  # fmt: skip

    def collect(outcomes: Iterable[dict[str, Any]]) -> None:
        for outcome in outcomes:
            results.append(outcome)
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


def prepare_videos(
    jobs: Sequence[PrepareJob],
    out_dir: str | Path,
    settings: PrepareSettings | None = None,
    *,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare every job into ``out_dir``; returns the summary also written to ``results.json``.

    Writes ``OUT/videos/trimmed_resize_{id}.mp4``, ``OUT/captions.jsonl`` (prepared videos with
    captions: ``video`` relative to OUT, ``caption``, ``split``, ``id``), ``OUT/failures.jsonl``
    (``id``, ``path``, ``reason``, ``kind``: "input" for bad inputs, "internal" for our bugs)
    and ``OUT/results.json``. Outputs that exist and open are skipped unless ``force``.
    Raises :class:`DataError` for bad settings or an OUT prepared with other settings.
    """
    settings = settings or PrepareSettings()
    settings.check()
    workers = workers if workers is not None else (os.cpu_count() or 1)
    out = Path(out_dir)
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    _check_previous(out, settings, force)
    for stale in videos.glob("*.partial"):
        stale.unlink()  # left by an interrupted run; redone below
    started = time.perf_counter()
    tasks = [(n, job, str(videos), settings, force) for n, job in enumerate(jobs)]
    results = _outcomes(tasks, workers, progress)

    failures, pairs, uncaptioned = [], [], 0
    for job, r in zip(jobs, results, strict=True):
        if r["status"] == "failed":
            failures.append(
                {k: r[k] for k in ("id", "path", "reason", "kind", "traceback") if k in r}
            )
            continue
        uncaptioned += not job.captions
        for caption, split, row_id in job.captions:
            pair = {"video": f"videos/{job.output_name}", "caption": caption, "split": split}
            pairs.append(pair if row_id is None else {**pair, "id": row_id})
    _write_atomic(out / "failures.jsonl", "".join(json.dumps(f) + "\n" for f in failures))
    _write_atomic(out / "captions.jsonl", "".join(json.dumps(p) + "\n" for p in pairs))
    done = [r for r in results if r["status"] == "done"]
    summary = {
        "out_dir": str(out),
        "inputs": len(results),
        "done": len(done),
        "skipped": sum(r["status"] == "skipped" for r in results),
        "failed": len(failures),
        "internal_errors": sum(f["kind"] == "internal" for f in failures),
        "failure_reasons": _reason_counts(failures),
        "pairs": len(pairs),
        "uncaptioned": uncaptioned,
        "frames_written": sum(r["frames"] for r in done),
        "bytes_written": sum(r["bytes"] for r in done),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "workers": workers,
        "settings": _settings_record(settings),
    }
    _write_atomic(out / "results.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _reason_counts(failures: list[dict[str, Any]]) -> dict[str, int]:
    """Failures per reason, FFmpeg's details cut off (``cannot open: ...`` -> ``cannot open``)."""
    counts: dict[str, int] = {}
    for f in failures:
        key = f["reason"].split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
