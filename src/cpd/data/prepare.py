"""The paper's preprocessing of web videos: middle 20 s, short side 256, H.264 (``cpd prepare``).

Each source video is cut to the middle ``seconds`` of its timeline (kept whole when shorter),
resized so that its short side is ``short_side`` and re-encoded as H.264 mp4 (yuv420p, even
dimensions, a keyframe every ``keyframe_seconds``, audio dropped) at
``OUT/videos/trimmed_resize_{id}.mp4``, the file name of the official Instagram-300k release.

Timeline. A packet scan (demux only) gives every frame's presentation timestamp; the video
spans from the first frame's pts to the last one's plus one frame duration (the median
spacing). Frames whose pts falls in ``[start, start + seconds)`` are kept, computed in exact
fractions of the stream's time base, so a 30 s clip at 10 fps cut to 2 s keeps frames 140..159.
Kept frames keep their own timestamps (shifted to start at 0), so variable frame rate survives
and the nominal rate (29.97 included) goes into the header. Streams without packet timestamps
are cut by frame count at their nominal rate instead.

Size. Like the official preprocessing, the short side becomes ``short_side`` also when that
means upscaling (the training clips' scale jitter assumes that input size); ``upscale=False``
keeps smaller videos at their size (rounded down to even dimensions).

Runs. Work goes to ``name.partial`` and is renamed when complete, so an interrupted run never
leaves a file that a later run would take for done; a rerun skips outputs that exist and open.
Every input ends in exactly one of done / skipped / failed; failures are listed with reasons in
``OUT/failures.jsonl``, and ``OUT/captions.jsonl`` pairs each prepared video with its
caption(s) for ``cpd pretrain data.manifest=OUT/captions.jsonl``.

Sources are opened here rather than through :mod:`cpd.video.decode`: a transcoder streams raw
frames with their timestamps into an encoder, which the clip reader (RGB arrays of chosen
frames) does not offer.
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
from fractions import Fraction
from glob import glob, has_magic
from pathlib import Path
from statistics import median_low
from typing import Any

from cpd.data.manifests import (
    INSTAGRAM_FILE_PATTERN,
    CaptionRecord,
    read_caption_manifest,
    read_instagram_json,
)
from cpd.errors import DataError, VideoDecodeError

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
class PrepareSettings:
    """How each video is cut, scaled and encoded (stored in ``results.json``)."""

    seconds: float = 20.0  # length of the middle segment kept; 0 keeps whole videos
    short_side: int = 256
    upscale: bool = True  # the paper resized every video to 256, small ones included
    crf: int = 23
    preset: str = "medium"
    keyframe_seconds: float = 1.0  # GOP length: short GOPs keep later seeks cheap

    def check(self) -> None:
        """Raise :class:`DataError` for settings no video could be prepared with."""
        if self.seconds < 0:
            raise DataError(f"seconds must be >= 0, got {self.seconds}")
        if self.short_side < 2 or self.short_side % 2:
            raise DataError(f"short side must be even and >= 2 (yuv420p), got {self.short_side}")
        if not 0 <= self.crf <= 51:
            raise DataError(f"crf must be in [0, 51], got {self.crf}")
        if self.keyframe_seconds <= 0:
            raise DataError(f"keyframe interval must be > 0 s, got {self.keyframe_seconds}")


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


# --- one video -----------------------------------------------------------------------------


def output_size(width: int, height: int, short_side: int, upscale: bool = True) -> tuple[int, int]:
    """``(width, height)`` with the short side ``short_side`` (or kept when smaller and not
    ``upscale``), aspect ratio kept, both even (yuv420p halves the chroma planes)."""
    short = min(width, height)
    target = short_side if upscale or short > short_side else max(2, short - short % 2)

    def even(x: float) -> int:
        return max(2, 2 * round(x / 2))

    return even(width * target / short), even(height * target / short)


def middle_window(pts: Sequence[int], time_base: Fraction, seconds: float) -> tuple | None:
    """``[start, end)`` in pts units (fractions) of the middle ``seconds``; ``None``: keep all.

    A video spans from its first frame to its last plus one frame duration (the median
    spacing of the sorted pts); a video no longer than ``seconds`` is kept whole.
    """
    if seconds <= 0 or len(pts) < 2:
        return None
    span = _span(pts)
    want = Fraction(str(seconds)) / time_base
    if span <= want:
        return None
    start = pts[0] + (span - want) / 2
    return start, start + want


def _span(pts: Sequence[int]) -> int:
    """First to last timestamp plus one frame duration (the median spacing), in pts units."""
    if len(pts) < 2:
        return 1
    return pts[-1] - pts[0] + median_low(b - a for a, b in zip(pts, pts[1:], strict=False))


def _open_source(path: str) -> Any:
    import av

    if not os.path.isfile(path):
        raise VideoDecodeError(path, "no such file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file")
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise VideoDecodeError(path, f"cannot open: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream")
    container.streams.video[0].codec_context.thread_count = 1  # the pool uses every core
    return container


def _scan(path: str) -> tuple[list[int], Fraction, bool]:
    """Sorted frame timestamps and their time base from a packet scan (no decoding).

    Without usable packet pts (missing or repeated), frames are counted by a full decode and
    numbered ``0..n-1`` in units of the nominal frame period; the flag says which happened.
    """
    import av

    with _open_source(path) as container:
        stream = container.streams.video[0]
        pts: list[int] | None = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                if packet.pts is None:
                    pts = None
                    break
                pts.append(packet.pts)
        except av.FFmpegError:
            pass  # a truncated file: the frames read so far are the video
        if pts is not None and pts and len(set(pts)) == len(pts) and stream.time_base:
            return sorted(pts), Fraction(stream.time_base), True
        rate = stream.average_rate or stream.guessed_rate or Fraction(30)
    with _open_source(path) as container:
        count = 0
        try:
            for _ in container.decode(video=0):
                count += 1
        except av.FFmpegError:
            pass
    if count == 0:
        raise VideoDecodeError(path, "no frame could be decoded")
    return list(range(count)), 1 / Fraction(rate), False


class _SeekMissed(Exception):
    """A seek landed after the first wanted frame (internal signal: decode from the start)."""


def _kept_frames(plan: _Plan, seek: bool) -> Iterable[tuple[Any, int]]:
    """Yield ``(frame, timestamp)`` of the frames inside the window in presentation order."""
    import av

    path, window, first, by_pts = plan.source, plan.window, plan.first, plan.by_pts
    with _open_source(path) as container:
        stream = container.streams.video[0]
        if seek:
            container.seek(first, backward=True, any_frame=False, stream=stream)
        started = False
        try:
            for number, frame in enumerate(container.decode(stream)):
                ts = frame.pts if by_pts else number
                if ts is None:
                    raise VideoDecodeError(path, f"decoded frame {number} has no timestamp")
                if window is not None and ts < window[0]:
                    continue
                if window is not None and ts >= window[1]:
                    break
                if not started and seek and ts > first:
                    raise _SeekMissed
                started = True
                yield frame, ts
        except av.FFmpegError as exc:
            raise VideoDecodeError(path, f"decoding failed: {exc}") from exc


@dataclass(frozen=True)
class _Plan:
    """What :func:`transcode` decided before decoding: which frames, their clock, the size."""

    source: str
    window: tuple | None  # [start, end) in the source's timestamp units; None keeps all
    first: int  # timestamp of the first kept frame (output time 0)
    by_pts: bool  # timestamps are packet pts (else frame numbers)
    time_base: Fraction
    rate: Fraction
    size: tuple[int, int]


def transcode(source: str | Path, dest: str | Path, settings: PrepareSettings) -> dict[str, Any]:
    """Write the middle segment of ``source``, resized and H.264-encoded, to ``dest`` (mp4).

    Returns ``{"frames", "width", "height", "fps", "seconds", "source_seconds"}``. Raises
    :class:`VideoDecodeError` for sources that cannot give a single frame.
    """
    source = os.fspath(source)
    pts, time_base, by_pts = _scan(source)
    window = middle_window(pts, time_base, settings.seconds)
    kept = [p for p in pts if window is None or window[0] <= p < window[1]]
    with _open_source(source) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate
    if len(kept) > 1:
        # the header's rate unless the timestamps say otherwise (variable frame rate, none)
        measured = Fraction(len(kept) - 1) / ((kept[-1] - kept[0]) * time_base)
        if not rate or not by_pts or abs(rate / measured - 1) > 0.005:
            rate = measured
    rate = Fraction(rate or 30).limit_denominator(1001)
    size = output_size(width, height, settings.short_side, settings.upscale)
    plan = _Plan(source, window, kept[0], by_pts, time_base, rate, size)
    try:
        # seek only when the segment starts after the first frame; a late landing is detected
        frames = _encode(plan, dest, settings, seek=by_pts and kept[0] > pts[0])
    except _SeekMissed:
        frames = _encode(plan, dest, settings, seek=False)
    if frames == 0:
        raise VideoDecodeError(source, "no frame of the middle segment could be decoded")
    return {
        "frames": frames,
        "width": size[0],
        "height": size[1],
        "fps": round(float(rate), 4),
        "seconds": round(float(_span(kept) * time_base), 3),
        "source_seconds": round(float(_span(pts) * time_base), 3),
    }


def _encode(plan: _Plan, dest: str | Path, settings: PrepareSettings, seek: bool) -> int:
    """Decode the kept frames of the source and encode them into ``dest``; returns the count."""
    import av
    from av.video.reformatter import VideoReformatter

    scaler = VideoReformatter()  # keeps its swscale context from frame to frame
    width, height = plan.size
    with av.open(os.fspath(dest), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=plan.rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        # frames keep the source's timestamps (variable frame rate survives)
        stream.time_base = stream.codec_context.time_base = plan.time_base
        stream.codec_context.thread_count = 1  # one process per core already; deterministic
        gop = max(1, round(float(plan.rate) * settings.keyframe_seconds))
        stream.options = {"crf": str(settings.crf), "preset": settings.preset, "g": str(gop)}
        count, last = 0, None
        for frame, ts in _kept_frames(plan, seek):
            if last is not None and ts <= last:
                continue  # a repeated timestamp: the muxer needs strictly increasing ones
            image = scaler.reformat(frame, width=width, height=height, format="yuv420p",
                                    interpolation="BICUBIC", threads=1)  # fmt: skip
            image.pts, image.time_base = int(ts - plan.first), plan.time_base
            for packet in stream.encode(image):
                out.mux(packet)
            count, last = count + 1, ts
        for packet in stream.encode():
            out.mux(packet)
    return count


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
