"""The paper's preprocessing of web videos: middle 20 s, short side 256, H.264 (``cpd prepare``).

Each source video is cut to the middle ``seconds`` of its timeline (kept whole when shorter),
resized so that its short side is ``short_side`` and re-encoded as H.264 mp4 (yuv420p, even
dimensions, a keyframe every ``keyframe_seconds``, audio dropped) at
``OUT/videos/trimmed_resize_{id}.mp4``, the file name of the official Instagram-300k release.

How one video is cut and scaled: :mod:`cpd.video.transcode`.

Inputs: a caption manifest read as ``cpd pretrain`` reads it (any format of
:mod:`cpd.data.manifests`, detected from the content and suffix unless given, with the same
column options and bad-rows policy), or video files, directories and glob patterns.

Runs. Work goes to ``name.partial`` and is renamed when complete, so an interrupted run never
leaves a file that a later run would take for done; a rerun skips outputs that exist and open.
Every input ends in exactly one of done / skipped / failed; failures are listed with reasons in
``OUT/failures.jsonl``, and ``OUT/captions.jsonl`` pairs each prepared video with its
caption(s) for ``cpd pretrain data.manifest=OUT/captions.jsonl``.

Shards (:func:`~cpd.data.prepare_shards.prepare_shards`, re-exported here): the same videos
written as webdataset tars in video2dataset's layout instead of loose files, resumable shard by
shard. What both share (jobs, parts, the worker pool): :mod:`cpd.data.prepare_jobs`.

Parts (``WorkPart``, ``--part I/N``): several machines share one job list, each taking the
jobs (loose files: job ``n`` with ``n % N == I``) or shards (shard ``s`` with ``s % N == I``)
of its part and writing its own ``failures.part-I-of-N.jsonl`` and ``results.part-I-of-N.json``
(and, loose, ``captions.part-I-of-N.jsonl``); together the parts write what one run writes.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from collections.abc import Sequence
from dataclasses import replace
from glob import glob, has_magic
from pathlib import Path
from typing import Any

from cpd.data.manifests import (
    CaptionRecord,
    ManifestReport,
    normalize_split,
    read_caption_manifest,
)
from cpd.data.prepare_jobs import (
    PrepareJob,
    WorkPart,
    _check_previous,
    _outcomes,
    _reason_counts,
    _settings_record,
    _write_atomic,
)
from cpd.data.prepare_jobs import _in_pool as _in_pool  # tests run it with a crashing worker
from cpd.data.prepare_shards import prepare_shards
from cpd.errors import DataError
from cpd.video.transcode import PrepareSettings, transcode

__all__ = [
    "PrepareJob",
    "PrepareSettings",
    "WorkPart",
    "jobs_from_manifest",
    "jobs_from_paths",
    "prepare_shards",
    "prepare_videos",
    "select_split",
    "transcode",
]

# what a directory input picks up
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".wmv",
                            ".mpg", ".mpeg", ".ts", ".3gp", ".ogv"})  # fmt: skip
DEFAULT_SPLIT = "train"  # pairs whose input names no split (pretraining reads "train")


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
    manifest: str | Path,
    video_dir: str | Path | None = None,
    format: str | None = None,
    **options: Any,
) -> list[PrepareJob]:
    """Jobs from a caption manifest, read as ``cpd pretrain`` reads it.

    ``format``: one of :data:`~cpd.data.manifests.FORMATS`, or None / ``"auto"`` to detect it
    from the content and suffix (:func:`~cpd.data.manifests.detect_format`; a ``.json`` file of
    JSON Lines is JSON Lines). ``options`` go to :func:`~cpd.data.manifests.read_caption_manifest`:
    ``video_key`` (a column, or a template such as ``"{page_dir}/{videoid}.mp4"``),
    ``caption_key``, ``id_key``, ``bad_rows`` (``"error"``/``"skip"``), ``bad_rows_file``,
    ``report``.

    Instagram JSON: sources are ``video_dir/{id}.*`` (or ``trimmed_resize_{id}.*``); an id with
    no such file becomes a job that fails as a missing file. The row formats: video paths are
    relative to ``video_dir`` (default: the manifest's folder); rows naming the same video
    share one job.
    """
    manifest = Path(manifest)
    report = options.pop("report", None)
    report = report if report is not None else ManifestReport()
    root = Path(video_dir) if video_dir is not None else manifest.parent
    records = read_caption_manifest(manifest, root, None, format, report=report, **options)
    if report.format == "instagram":
        if video_dir is None:
            raise DataError(f"{manifest}: an Instagram JSON manifest needs the video directory")
        return _instagram_jobs(records, Path(video_dir))
    by_source: dict[str, list[CaptionRecord]] = {}
    for r in records:
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


def _instagram_jobs(records: list[CaptionRecord], video_dir: Path) -> list[PrepareJob]:
    """Jobs of Instagram ids, whose sources are ``video_dir/{id}.*`` (any suffix)."""
    stems = _index_dir(video_dir)
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


def _read_captions(
    path: Path, format: str | None, options: dict[str, Any]
) -> dict[str, list[tuple[str, str, str | None]]]:
    """Captions keyed by file stem: Instagram JSON ids, or a row manifest's id / video."""
    records = read_caption_manifest(path, path.parent, None, format, **options)
    out: dict[str, list[tuple[str, str, str | None]]] = {}
    for r in records:
        # an explicit id, or the manifest's video path without suffix: its last part is the stem
        key = posixpath.basename(r.video_id.replace("\\", "/"))
        out.setdefault(key, []).append((r.caption, r.split or DEFAULT_SPLIT, None))
    return out


def jobs_from_paths(
    inputs: Sequence[str | Path],
    captions: str | Path | None = None,
    format: str | None = None,
    **options: Any,
) -> list[PrepareJob]:
    """Jobs from video files, directories or glob patterns; ids are file stems.

    ``captions`` (optional) pairs ids with captions: a caption manifest of any format, read as
    in :func:`jobs_from_manifest` (``format`` and ``options`` alike), whose Instagram ids, else
    row ``id``, else the stem of the row's video, name the file stem. Videos without a caption
    are still prepared but left out of ``captions.jsonl``.
    """
    table = _read_captions(Path(captions), format, options) if captions is not None else {}
    jobs = []
    for path in _expand(inputs):
        video_id = Path(path).stem
        rows = table.get(video_id, [])
        single = len(rows) == 1
        rows_out = tuple((c, s, video_id if single else None) for c, s, _ in rows)
        jobs.append(PrepareJob(video_id, path, rows_out))
    return _check_unique(jobs)


def select_split(jobs: Sequence[PrepareJob], split: str) -> list[PrepareJob]:
    """The jobs with a caption of ``split`` (``validation`` = ``val``, as manifests read it),
    each keeping only those captions, in their order.

    Writes one split apart (``cpd prepare --split val``), e.g. the validation shards that
    pretraining reads from their own folder. Videos without a caption are in no split.
    """
    wanted = normalize_split(split)
    selected = []
    for job in jobs:
        rows = tuple(row for row in job.captions if row[1] == wanted)
        if rows:
            selected.append(replace(job, captions=rows))
    return selected


# --- loose files ---------------------------------------------------------------------------


def prepare_videos(
    jobs: Sequence[PrepareJob],
    out_dir: str | Path,
    settings: PrepareSettings | None = None,
    *,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
    part: WorkPart | None = None,
) -> dict[str, Any]:
    """Prepare every job into ``out_dir``; returns the summary also written to ``results.json``.

    Writes ``OUT/videos/trimmed_resize_{id}.mp4``, ``OUT/captions.jsonl`` (prepared videos with
    captions: ``video`` relative to OUT, ``caption``, ``split``, ``id``), ``OUT/failures.jsonl``
    (``id``, ``path``, ``reason``, ``kind``: "input" for bad inputs, "internal" for our bugs)
    and ``OUT/results.json``. Outputs that exist and open are skipped unless ``force``.
    ``part`` takes the jobs ``n`` with ``n % N == I`` only, and names the three lists
    ``*.part-I-of-N.*``. Raises :class:`DataError` for bad settings or an OUT prepared with
    other settings.
    """
    settings = settings or PrepareSettings()
    settings.check()
    part = part or WorkPart()
    workers = workers if workers is not None else (os.cpu_count() or 1)
    out = Path(out_dir)
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    _check_previous(out, settings, force)
    mine = [(n, job) for n, job in enumerate(jobs) if part.owns(n)]
    own_names = {job.output_name + ".partial" for _, job in mine}
    for stale in videos.glob("*.partial"):
        if stale.name in own_names:  # other parts may be writing theirs right now
            stale.unlink(missing_ok=True)  # left by an interrupted run; redone below
    started = time.perf_counter()
    tasks = [(n, job, str(videos / job.output_name), settings, force) for n, job in mine]
    results = _outcomes(tasks, workers, progress)

    failures, pairs, uncaptioned = [], [], 0
    for (_, job), r in zip(mine, results, strict=True):
        if r["status"] == "failed":
            failures.append(
                {k: r[k] for k in ("id", "path", "reason", "kind", "traceback") if k in r}
            )
            continue
        uncaptioned += not job.captions
        for caption, split, row_id in job.captions:
            pair = {"video": f"videos/{job.output_name}", "caption": caption, "split": split}
            pairs.append(pair if row_id is None else {**pair, "id": row_id})
    failures_file = part.file_name("failures", ".jsonl")
    captions_file = part.file_name("captions", ".jsonl")
    _write_atomic(out / failures_file, "".join(json.dumps(f) + "\n" for f in failures))
    _write_atomic(out / captions_file, "".join(json.dumps(p) + "\n" for p in pairs))
    done = [r for r in results if r["status"] == "done"]
    summary = {
        "out_dir": str(out),
        "mode": "files",
        "part": str(part),
        "failures_file": failures_file,
        "captions_file": captions_file,
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
    _write_atomic(out / part.file_name("results", ".json"), json.dumps(summary, indent=2) + "\n")
    return summary
