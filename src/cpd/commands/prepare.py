"""Prepare web videos the paper's way: middle 20 s, short side 256, H.264 mp4.

Inputs: a caption manifest (--manifest: the Instagram-300k JSON with --video-root holding the
source files {id}.*, or a row manifest whose video paths are relative to --video-root, default
its folder), or video files / directories / glob patterns (ids = file stems) with an optional
--caption-file manifest (Instagram ids, else the row's id, else the stem of its video, name the
input's file stem).

Manifests are read as cpd pretrain reads them: --manifest-format (default auto: from the content and
suffix; instagram, jsonl, json, csv, tsv, parquet), --video-key (a column, or a template over
the columns such as '{page_dir}/{videoid}.mp4'), --caption-key and --id-key name the columns;
--bad-rows skip leaves rows with problems out and writes them to OUT/bad_rows.jsonl
(bad_rows.part-I-of-N.jsonl with --part) instead of stopping. WebVid's results.csv:
  cpd prepare --manifest results.csv --video-root webvid/ --video-key '{page_dir}/{videoid}.mp4'
      --caption-key name --id-key videoid -o OUT --shards

Writes OUT/videos/trimmed_resize_{id}.mp4, OUT/captions.jsonl (for
`cpd pretrain data.manifest=OUT/captions.jsonl`), OUT/failures.jsonl (each failed input with
its reason) and OUT/results.json (counts and settings). A rerun skips finished videos and redoes
interrupted ones. Like the official preprocessing, videos smaller than the short side are
upscaled; --no-upscale keeps them. Exit status: 0 all prepared, 1 some failed, 2 bad input.

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

from cpd.commands._options import add_deprecated, add_manifest_options, add_run_options
from cpd.errors import CPDError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cpd prepare``."""
    parser.add_argument("inputs", nargs="*", metavar="VIDEO",
                        help="video files, directories or glob patterns (or use --manifest)")  # fmt: skip
    g = parser.add_argument_group("reading the manifest (as cpd pretrain reads it)")
    add_manifest_options(g)
    g.add_argument("--caption-file", metavar="FILE",
                   help="captions for VIDEO inputs: a manifest keyed by file stem")  # fmt: skip
    add_deprecated(g, "--video-dir", "--video-root", "video_root")
    add_deprecated(g, "--captions", "--caption-file", "caption_file")
    add_deprecated(g, "--format", "--manifest-format", "manifest_format")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="keep the middle this many seconds (default 20; 0 = whole)")  # fmt: skip
    parser.add_argument("--short-side", type=int, default=256, help="short side (default 256)")
    parser.add_argument("--no-upscale", action="store_true",
                        help="keep videos smaller than --short-side at their size")  # fmt: skip
    parser.add_argument("--crf", type=int, default=23, help="x264 quality, lower = better (23)")
    parser.add_argument("--preset", default="medium", help="x264 preset (default medium)")
    parser.add_argument("--keyframe-seconds", type=float, default=1.0,
                        help="keyframe interval in seconds (default 1)")  # fmt: skip
    parser.add_argument("--shards", action="store_true",
                        help="write webdataset tar shards (video2dataset's layout), not files")  # fmt: skip
    parser.add_argument("--shard-size", type=int, metavar="N",
                        help="inputs per shard with --shards (default 1000)")  # fmt: skip
    parser.add_argument("--split", metavar="NAME",
                        help="only the videos with a caption of this split (train, val, ...)")  # fmt: skip
    parser.add_argument("--part", metavar="I/N",
                        help="do part I (0-based) of N: shards (or inputs) s with s %% N == I")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="redo videos already prepared")
    add_run_options(parser, out_required=True, device=False, workers=os.cpu_count() or 1,
                    threads=False)  # fmt: skip


MANIFEST_DEFAULTS = {"manifest_format": "auto", "video_key": "video", "caption_key": "caption",
                     "id_key": "id", "bad_rows": "error"}  # fmt: skip


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
    from cpd.data.manifests import ManifestReport
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
    if args.caption_file and args.manifest:
        return fail("--caption-file goes with VIDEO inputs; a manifest carries its own captions")
    given = [k for k, v in MANIFEST_DEFAULTS.items() if getattr(args, k) != v]
    if given and not (args.manifest or args.caption_file):
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        return fail(f"{flags}: options of --manifest or --caption-file, and neither is given")
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
        report = ManifestReport()
        options: dict[str, Any] = {"video_key": args.video_key, "caption_key": args.caption_key,
                                   "id_key": args.id_key, "bad_rows": args.bad_rows,
                                   "report": report}  # fmt: skip
        if args.bad_rows == "skip":  # one file per part: parts may share OUT
            options["bad_rows_file"] = os.path.join(args.out, part.file_name("bad_rows", ".jsonl"))
        manifest_format = None if args.manifest_format == "auto" else args.manifest_format
        if args.manifest:
            jobs = jobs_from_manifest(args.manifest, args.video_root, manifest_format, **options)
        else:
            jobs = jobs_from_paths(args.inputs, args.caption_file, manifest_format, **options)
        _report_manifest(report, options.get("bad_rows_file"))
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


def _report_manifest(report: Any, bad_rows_file: str | None) -> None:
    """Tell stderr which manifest rows were left out (bad ones, and downloads that failed)."""
    if report.bad_rows:
        print(f"{report.num_bad_rows} bad manifest rows were skipped: see {bad_rows_file}",
              file=sys.stderr)  # fmt: skip
    if report.not_written:
        print(f"{report.num_not_written} manifest rows have a status other than 'success' (no "
              "video was written) and were left out", file=sys.stderr)  # fmt: skip
