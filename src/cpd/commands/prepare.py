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
    parser.add_argument("--force", action="store_true", help="redo videos already prepared")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def format_summary(summary: dict[str, Any]) -> str:
    """The run's outcome as a small table, failures by reason, and where to look."""
    rows = [("inputs", summary["inputs"]), ("done", summary["done"]),
            ("skipped (already prepared)", summary["skipped"]), ("failed", summary["failed"])]  # fmt: skip
    rows += [(f"  {reason}", n) for reason, n in summary["failure_reasons"].items()]
    rows += [("caption pairs written", summary["pairs"]),
             ("videos without caption", summary["uncaptioned"]),
             ("frames written", summary["frames_written"]),
             ("MB written", f"{summary['bytes_written'] / 1e6:.1f}"),
             ("seconds", summary["wall_seconds"]), ("workers", summary["workers"])]  # fmt: skip
    lines = [f"{name:<30}{value!s:>10}" for name, value in rows]
    out = summary["out_dir"]
    if summary["failed"]:
        lines.append(f"SOME INPUTS FAILED: see {os.path.join(out, 'failures.jsonl')}")
    if summary["internal_errors"]:
        lines.append(f"{summary['internal_errors']} of them are internal errors (a bug in cpd): "
                     "please report them with their traceback")  # fmt: skip
    lines.append(f"-> {os.path.join(out, 'captions.jsonl')}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Prepare the videos and print the summary; 0 all prepared, 1 some failed, 2 bad input."""
    from cpd.data.prepare import (
        PrepareSettings,
        jobs_from_manifest,
        jobs_from_paths,
        prepare_videos,
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
    settings = PrepareSettings(seconds=args.seconds, short_side=args.short_side,
                               upscale=not args.no_upscale, crf=args.crf, preset=args.preset,
                               keyframe_seconds=args.keyframe_seconds)  # fmt: skip
    try:
        settings.check()
        if args.manifest:
            jobs = jobs_from_manifest(args.manifest, args.video_dir, args.format)
        else:
            jobs = jobs_from_paths(args.inputs, args.captions)
        if not jobs:
            return fail("no input videos found")
        summary = prepare_videos(jobs, args.out, settings, workers=args.workers,
                                 force=args.force, progress=not args.quiet)  # fmt: skip
    except CPDError as exc:
        return fail(str(exc))
    print(format_summary(summary))
    return 1 if summary["failed"] else 0
