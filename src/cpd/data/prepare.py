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

Shards (:func:`prepare_shards`): the same videos written as webdataset tars in video2dataset's
layout instead of loose files (:mod:`cpd.data.shard_writer`), resumable shard by shard.

Parts (``WorkPart``, ``--part I/N``): several machines share one job list, each taking the
jobs (loose files: job ``n`` with ``n % N == I``) or shards (shard ``s`` with ``s % N == I``)
of its part and writing its own ``failures.part-I-of-N.jsonl`` and ``results.part-I-of-N.json``
(and, loose, ``captions.part-I-of-N.jsonl``); together the parts write what one run writes.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from dataclasses import asdict, dataclass, replace
from glob import glob, has_magic
from pathlib import Path
from typing import Any

from cpd.data.manifests import (
    INSTAGRAM_FILE_PATTERN,
    CaptionRecord,
    normalize_split,
    read_caption_manifest,
    read_instagram_json,
)
from cpd.data.shard_writer import (
    FAILED_TO_DOWNLOAD,
    FAILED_TO_SUBSAMPLE,
    SUCCESS,
    TMP_DIR,
    ShardPlan,
    ShardSample,
    begin_shard,
    complete_stats,
    read_failures,
    shard_paths,
    write_shard,
)
from cpd.errors import CPDError, DataError, VideoDecodeError
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


# --- a whole run -----------------------------------------------------------------------------


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


def _reason_counts(failures: list[dict[str, Any]]) -> dict[str, int]:
    """Failures per reason, FFmpeg's details cut off (``cannot open: ...`` -> ``cannot open``)."""
    counts: dict[str, int] = {}
    for f in failures:
        key = f["reason"].split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


# --- shards ----------------------------------------------------------------------------------

# failures of reading the source rather than of cutting it: video2dataset's failed downloads
_UNREADABLE = frozenset({"no such file", "empty file"})


def _check_shard_dependencies() -> None:
    """Fail early and clearly when the shard writer's libraries are missing."""
    missing = []
    for module in ("webdataset", "pyarrow"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise CPDError(f"--shards needs {' and '.join(missing)}: pip install {' '.join(missing)}")


def _shard_digest(plan: ShardPlan, jobs: Sequence[PrepareJob], shard: int) -> str:
    """What a shard holds (keys, ids, captions), to tell a complete shard of another job list.

    Source paths are left out: the same videos under another mount point are the same shard.
    """
    items = [[plan.key(n), jobs[n].video_id, [list(c) for c in jobs[n].captions]]
             for n in plan.jobs_of(shard)]  # fmt: skip
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


def _shard_record(key: str, job: PrepareJob, outcome: dict[str, Any]) -> dict[str, Any]:
    """The parquet row of one job, also the ``.json`` of its sample when it succeeded."""
    failed = outcome["status"] == "failed"
    if not failed:
        status = SUCCESS
    elif job.missing_reason is not None or outcome["reason"] in _UNREADABLE:
        status = FAILED_TO_DOWNLOAD
    else:
        status = FAILED_TO_SUBSAMPLE
    # the first caption row is the sample's caption (one .txt); all of them are kept
    first = job.captions[0] if job.captions else (None, None, None)
    return {
        "key": key,
        "caption": first[0],
        "url": job.source,
        "status": status,
        "error_message": outcome["reason"] if failed else None,
        "id": job.video_id,
        "split": first[1],
        "captions": [caption for caption, _, _ in job.captions],
        "duration": outcome.get("seconds"),
        "width": outcome.get("width"),
        "height": outcome.get("height"),
        "fps": outcome.get("fps"),
        "frames": outcome.get("frames"),
        "source_duration": outcome.get("source_seconds"),
    }


def _failure_entry(record: dict[str, Any], kind: str | None = None) -> dict[str, Any]:
    """A line of the failures list from a parquet row (``kind`` told, or read from the reason)."""
    reason = record["error_message"] or ""
    kind = kind or ("internal" if reason.startswith("internal error") else "input")
    return {"id": record["id"], "path": record["url"], "key": record["key"],
            "status": record["status"], "reason": reason, "kind": kind}  # fmt: skip


def _source_bytes(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _write_one_shard(
    out: Path,
    plan: ShardPlan,
    shard: int,
    jobs: Sequence[PrepareJob],
    outcomes: dict[int, dict[str, Any]],
    extra_stats: dict[str, Any],
) -> dict[str, Any]:
    """Write a shard whose jobs all have an outcome; returns what the run summary needs."""
    name = plan.name(shard)
    folder = shard_paths(out, name)["tmp"]
    records, samples, failures = [], [], []
    counts = {SUCCESS: 0, FAILED_TO_DOWNLOAD: 0, FAILED_TO_SUBSAMPLE: 0}
    status_dict: dict[str, int] = {}
    source_bytes = frames = video_bytes = uncaptioned = 0
    for n in plan.jobs_of(shard):
        job, outcome = jobs[n], outcomes[n]
        record = _shard_record(plan.key(n), job, outcome)
        records.append(record)
        counts[record["status"]] += 1
        reason = record["error_message"] or SUCCESS  # video2dataset counts error messages
        status_dict[reason] = status_dict.get(reason, 0) + 1
        if record["status"] == SUCCESS:
            video = folder / f"{record['key']}.mp4"
            samples.append(ShardSample(record["key"], video, record["caption"] or "", record))
            source_bytes += _source_bytes(job.source)
            frames += outcome["frames"]
            video_bytes += outcome["bytes"]
            uncaptioned += not job.captions
        else:
            entry = _failure_entry(record, outcome.get("kind"))
            if "traceback" in outcome:
                entry["traceback"] = outcome["traceback"]
            failures.append(entry)
    now = time.time()
    start = min((o["started"] for o in outcomes.values() if "started" in o), default=now)
    stats = {
        "count": len(records),
        "successes": counts[SUCCESS],
        "failed_to_download": counts[FAILED_TO_DOWNLOAD],
        "failed_to_subsample": counts[FAILED_TO_SUBSAMPLE],
        "duration": now - start,
        "bytes_downloaded": source_bytes,  # the source files read, as video2dataset counts
        "start_time": start,
        "end_time": now,
        "status_dict": status_dict,
        # cpd's own: what a rerun checks before it skips this shard, and the output
        "shard": name,
        "frames_written": frames,
        "video_bytes_written": video_bytes,
        **extra_stats,
    }
    tar_bytes = write_shard(out, name, samples, records, stats)
    return {"done": counts[SUCCESS], "failures": failures, "frames": frames,
            "bytes": tar_bytes, "uncaptioned": uncaptioned}  # fmt: skip


def prepare_shards(
    jobs: Sequence[PrepareJob],
    out_dir: str | Path,
    settings: PrepareSettings | None = None,
    *,
    shard_size: int = 1000,
    part: WorkPart | None = None,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare the jobs into webdataset shards in video2dataset's layout; returns the summary
    also written to ``OUT/results.json``.

    Shard ``s`` holds jobs ``[s * shard_size, (s + 1) * shard_size)`` in the order given, as
    ``OUT/{s:05d}.tar`` (``{key}.mp4``, ``{key}.txt``: the first caption, ``{key}.json``: the
    parquet row, all captions included), ``OUT/{s:05d}.parquet`` (every job, failed or not)
    and ``OUT/{s:05d}_stats.json``; see :mod:`cpd.data.shard_writer`. ``part`` writes the
    shards ``s % N == I`` only. Complete shards are skipped unless ``force``; incomplete ones
    are redone whole. ``OUT/failures.jsonl`` (``failures.part-I-of-N.jsonl``) lists every failed
    job of the part's shards, those of skipped shards read back from their parquet. Raises
    :class:`DataError` for bad settings, or a complete shard of other settings or other inputs.
    """
    settings = settings or PrepareSettings()
    settings.check()
    part = part or WorkPart()
    plan = ShardPlan(len(jobs), shard_size)
    _check_shard_dependencies()
    workers = workers if workers is not None else (os.cpu_count() or 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_previous(out, settings, force)
    record = _settings_record(settings)
    shards = plan.shards_of_part(part.index, part.count)
    todo: list[int] = []
    complete: dict[int, dict[str, Any]] = {}
    digests = {shard: _shard_digest(plan, jobs, shard) for shard in shards}
    for shard in shards:
        stats = None if force else complete_stats(out, plan.name(shard))
        if stats is None:
            todo.append(shard)
            continue
        tar = out / f"{plan.name(shard)}.tar"
        if stats.get("settings") != record:
            raise DataError(f"{tar} was prepared with other settings {stats.get('settings')}; "
                            "use force to redo it, or another output directory")  # fmt: skip
        if stats.get("inputs_sha256") != digests[shard] or stats.get("shard_size") != shard_size:
            raise DataError(
                f"{tar} holds other inputs than shard {shard} of this job list (inputs added, "
                "removed or reordered, or another shard size); use force to rewrite it, or "
                "another output directory"
            )
        complete[shard] = stats

    started = time.perf_counter()
    tasks = []
    for shard in todo:
        folder = begin_shard(out, plan.name(shard))
        tasks += [(n, jobs[n], str(folder / f"{plan.key(n)}.mp4"), settings, True)
                  for n in plan.jobs_of(shard)]  # fmt: skip
    pending: dict[int, dict[int, dict[str, Any]]] = {shard: {} for shard in todo}
    written: list[dict[str, Any]] = []

    def store(outcome: dict[str, Any]) -> None:
        # a shard is written as soon as its last job is in, so a stopped run keeps it
        shard = plan.shard_of(outcome["number"])
        pending[shard][outcome["number"]] = outcome
        if len(pending[shard]) == len(plan.jobs_of(shard)):
            extra = {"shard_size": shard_size, "settings": record,
                     "inputs_sha256": digests[shard]}  # fmt: skip
            written.append(_write_one_shard(out, plan, shard, jobs, pending.pop(shard), extra))

    _outcomes(tasks, workers, progress, on_result=store)
    with contextlib.suppress(OSError):
        (out / TMP_DIR).rmdir()  # when empty: other parts may still be using it

    failures = [f for w in written for f in w["failures"]]
    for shard in complete:
        failures += [_failure_entry(r) for r in read_failures(out, plan.name(shard))]
    failures.sort(key=lambda f: f["key"])
    failures_file = part.file_name("failures", ".jsonl")
    _write_atomic(out / failures_file, "".join(json.dumps(f) + "\n" for f in failures))
    summary = {
        "out_dir": str(out),
        "mode": "shards",
        "part": str(part),
        "failures_file": failures_file,
        "shard_size": shard_size,
        "shards": plan.num_shards,
        "part_shards": len(shards),
        "shards_written": len(written),
        "shards_skipped": len(complete),
        "inputs": sum(len(plan.jobs_of(shard)) for shard in shards),
        "done": sum(w["done"] for w in written),
        "skipped": sum(int(stats.get("successes", 0)) for stats in complete.values()),
        "failed": len(failures),
        "internal_errors": sum(f["kind"] == "internal" for f in failures),
        "failure_reasons": _reason_counts(failures),
        "uncaptioned": sum(w["uncaptioned"] for w in written),
        "frames_written": sum(w["frames"] for w in written),
        "bytes_written": sum(w["bytes"] for w in written),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "workers": workers,
        "settings": record,
    }
    _write_atomic(out / part.file_name("results", ".json"), json.dumps(summary, indent=2) + "\n")
    return summary
