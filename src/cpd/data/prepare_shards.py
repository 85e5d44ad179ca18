"""``cpd prepare --shards``: the prepared videos as webdataset tars in video2dataset's layout.

The same videos that :func:`cpd.data.prepare.prepare_videos` writes as loose files, written
instead as shards (:mod:`cpd.data.shard_writer`), resumable shard by shard: shard ``s`` holds
jobs ``[s * shard_size, (s + 1) * shard_size)`` of the job list, is written as soon as its last
video is in, and a rerun skips the shards that are complete. ``--part I/N`` takes the shards
``s % N == I``.

Jobs, parts, the worker pool and the run's bookkeeping come from :mod:`cpd.data.prepare_jobs`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cpd.data.prepare_jobs import (
    PrepareJob,
    WorkPart,
    _check_previous,
    _outcomes,
    _reason_counts,
    _settings_record,
    _write_atomic,
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
from cpd.errors import CPDError, DataError
from cpd.video.transcode import PrepareSettings

__all__ = ["prepare_shards"]

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
