"""Prepare web videos the paper's way: middle 20 s, short side 256, H.264 mp4.

Inputs: a caption manifest (--manifest: the Instagram-300k JSON with --video-dir holding the
source files {id}.*, or a JSONL/CSV manifest whose `video` paths are relative to --video-dir,
default its folder), or video files / directories / glob patterns (ids = file stems) with an
optional --captions file (the Instagram JSON, or a JSONL/CSV caption manifest whose `id`, else
the stem of its `video`, names the input's file stem).

Writes OUT/videos/trimmed_resize_{id}.mp4, OUT/captions.jsonl (for
`cpd pretrain data.manifest=OUT/captions.jsonl`), OUT/failures.jsonl (each failed input with
its reason) and OUT/results.json (counts and settings). A rerun skips finished videos and redoes
interrupted ones. Like the official preprocessing, videos smaller than the short side are
upscaled; --no-upscale keeps them. Exit status: 0 all prepared, 1 some failed, 2 bad arguments.

--shards writes webdataset shards in video2dataset's layout instead: OUT/00000.tar
({key}.mp4, {key}.txt, {key}.json), OUT/00000.parquet (every input of the shard, failed ones
included) and OUT/00000_stats.json, --shard-size inputs each (default 1000), in input order;
a rerun skips complete shards and redoes interrupted ones. --part I/N (0 <= I < N) shares the
work among N machines: part I takes shards s with s % N == I (loose files: inputs n with
n % N == I) and writes failures.part-I-of-N.jsonl and results.part-I-of-N.json; all parts
together write what one machine writes. --split NAME keeps only the videos with a caption of
that split (e.g. train and val into two shard folders, for data.shards and data.val_shards).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from cpd.errors import CPDError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cpd prepare``."""
    parser.add_argument("inputs", nargs="*", metavar="VIDEO",
                        help="video files, directories or glob patterns (or use --manifest)")  # fmt: skip
    parser.add_argument("-o", "--out", required=True, help="output directory (created)")
    parser.add_argument("--manifest", help="caption manifest (.json Instagram, .jsonl, .csv)")
    parser.add_argument("--format", choices=("instagram", "jsonl", "csv"),
                        help="manifest format (default: from the suffix)")  # fmt: skip
    parser.add_argument("--video-dir", help="where the manifest's source videos are")
    parser.add_argument("--captions", help="captions for VIDEO inputs, keyed by file stem")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="keep the middle this many seconds (default 20; 0 = whole)")  # fmt: skip
    parser.add_argument("--short-side", type=int, default=256, help="short side (default 256)")
    parser.add_argument("--no-upscale", action="store_true",
                        help="keep videos smaller than --short-side at their size")  # fmt: skip
    parser.add_argument("--crf", type=int, default=23, help="x264 quality, lower = better (23)")
    parser.add_argument("--preset", default="medium", help="x264 preset (default medium)")
    parser.add_argument("--keyframe-seconds", type=float, default=1.0,
                        help="keyframe interval in seconds (default 1)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: the CPU count)")  # fmt: skip
    parser.add_argument("--shards", action="store_true",
                        help="write webdataset tar shards (video2dataset's layout), not files")  # fmt: skip
    parser.add_argument("--shard-size", type=int, metavar="N",
                        help="inputs per shard with --shards (default 1000)")  # fmt: skip
    parser.add_argument("--split", metavar="NAME",
                        help="only the videos with a caption of this split (train, val, ...)")  # fmt: skip
    parser.add_argument("--part", metavar="I/N",
                        help="do part I (0-based) of N: shards (or inputs) s with s %% N == I")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="redo videos already prepared")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def format_summary(summary: dict[str, Any]) -> str:
    """The run's outcome as a small table, failures by reason, and where to look."""
    shards = summary.get("mode") == "shards"
    part = summary.get("part", "0/1")
    rows: list[tuple[str, Any]] = [] if part == "0/1" else [("part", part)]
    if shards:
        rows += [("shards (all parts)", summary["shards"]),
                 ("shards written", summary["shards_written"]),
                 ("shards skipped (complete)", summary["shards_skipped"])]  # fmt: skip
    skipped = "skipped (complete shards)" if shards else "skipped (already prepared)"
    rows += [("inputs", summary["inputs"]), ("done", summary["done"]),
             (skipped, summary["skipped"]), ("failed", summary["failed"])]  # fmt: skip
    rows += [(f"  {reason}", n) for reason, n in summary["failure_reasons"].items()]
    if not shards:
        rows.append(("caption pairs written", summary["pairs"]))
    rows += [("videos without caption", summary["uncaptioned"]),
             ("frames written", summary["frames_written"]),
             ("MB written", f"{summary['bytes_written'] / 1e6:.1f}"),
             ("seconds", summary["wall_seconds"]), ("workers", summary["workers"])]  # fmt: skip
    lines = [f"{name:<30}{value!s:>10}" for name, value in rows]
    out = summary["out_dir"]
    if summary["failed"]:
        failures = summary.get("failures_file", "failures.jsonl")
        lines.append(f"SOME INPUTS FAILED: see {os.path.join(out, failures)}")
    if summary["internal_errors"]:
        lines.append(f"{summary['internal_errors']} of them are internal errors (a bug in cpd): "
                     "please report them with their traceback")  # fmt: skip
    if shards:
        lines.append(f"-> {os.path.join(out, '*.tar')} (webdataset; one .parquet per shard)")
    else:
        lines.append(f"-> {os.path.join(out, summary.get('captions_file', 'captions.jsonl'))}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Prepare the videos and print the summary; 0 all prepared, 1 some failed, 2 bad input."""
    from cpd.data.prepare import (
        PrepareSettings,
        WorkPart,
        jobs_from_manifest,
        jobs_from_paths,
        prepare_shards,
        prepare_videos,
        select_split,
    )

    def fail(message: str) -> int:
        print(f"cpd prepare: error: {message}", file=sys.stderr)
        return 2

    if bool(args.manifest) == bool(args.inputs):
        return fail("give either --manifest or VIDEO inputs (files, directories, globs)")
    if args.captions and args.manifest:
        return fail("--captions goes with VIDEO inputs; a manifest carries its own captions")
    if args.workers < 1:
        return fail(f"--workers must be >= 1, got {args.workers}")
    if args.shard_size is not None and not args.shards:
        return fail("--shard-size goes with --shards")
    shard_size = 1000 if args.shard_size is None else args.shard_size
    if shard_size < 1:
        return fail(f"--shard-size must be >= 1, got {shard_size}")
    settings = PrepareSettings(seconds=args.seconds, short_side=args.short_side,
                               upscale=not args.no_upscale, crf=args.crf, preset=args.preset,
                               keyframe_seconds=args.keyframe_seconds)  # fmt: skip
    try:
        settings.check()
        part = WorkPart.parse(args.part) if args.part is not None else WorkPart()
        if args.manifest:
            jobs = jobs_from_manifest(args.manifest, args.video_dir, args.format)
        else:
            jobs = jobs_from_paths(args.inputs, args.captions)
        if not jobs:
            return fail("no input videos found")
        if args.split is not None:
            jobs = select_split(jobs, args.split)
            if not jobs:
                return fail(f"no input has a caption of split {args.split!r}")
        common = {"workers": args.workers, "force": args.force, "progress": not args.quiet,
                  "part": part}  # fmt: skip
        if args.shards:
            summary = prepare_shards(jobs, args.out, settings, shard_size=shard_size, **common)
        else:
            summary = prepare_videos(jobs, args.out, settings, **common)
    except CPDError as exc:
        return fail(str(exc))
    print(format_summary(summary))
    return 1 if summary["failed"] else 0
