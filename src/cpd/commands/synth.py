"""Write the embedded synthetic video-caption dataset (no downloads; about a minute on 2 cores).

Renders glyphs (square, triangle, star, ...) in six colours over textured backgrounds, each doing
one of eight motions (MovingLeft/Right/Up/Down, RotatingClockwise/Counterclockwise, Growing,
Shrinking), as H.264 mp4 files with natural captions. Each sampled appearance is rendered with
several motions, so pretraining must learn motion, not only appearance.

Writes to -o/--out OUT (default data/synth; created, must be empty): OUT/captions.jsonl (video-caption pairs, train/val), OUT/videos/<Motion>/*.mp4,
OUT/ucfTrainTestlist/ (the motion classes in UCF101's layout), OUT/results.json (the summary
printed) and, last, OUT/dataset.json (metadata; "hflip": false, recommended clip settings).
"""

from __future__ import annotations

import argparse
import sys

from cpd.commands._options import add_run_options, take_legacy_out
from cpd.errors import CPDError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cpd synth``."""
    parser.add_argument("--num-videos", type=int, default=480, help="videos in all (default 480)")
    parser.add_argument("--width", type=int, default=128, help="frame width (default 128)")
    parser.add_argument("--height", type=int, default=128, help="frame height (default 128)")
    parser.add_argument("--num-frames", type=int, default=75, help="frames per video (default 75)")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate (default 30)")
    parser.add_argument("--motions-per-group", type=int, default=4,
                        help="motions rendered per sampled appearance (default 4)")  # fmt: skip
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="fraction of appearance groups held out for val (default 0.2)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty OUT")
    add_run_options(parser, out="data/synth", legacy_out=True, device=False, seed=True,
                    threads=False)  # fmt: skip


def format_summary(summary: dict) -> str:
    """The summary as a small table: videos per class and split, totals, time and size."""
    rows = [f"{'class':<26}{'train':>7}{'val':>7}"]
    for name, counts in summary["per_class"].items():
        rows.append(f"{name:<26}{counts['train']:>7}{counts['val']:>7}")
    splits = summary["splits"]
    rows.append(f"{'total':<26}{splits['train']:>7}{splits['val']:>7}")
    rows.append(
        f"{summary['num_videos']} videos in {summary['num_groups']} appearance groups, "
        f"{summary['bytes'] / 1e6:.1f} MB, {summary['seconds']:.1f} s "
        f"({summary['workers']} workers) -> {summary['out_dir']}"
    )
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    """Write the dataset and print its summary; exit status 2 for bad settings or a used OUT."""
    from cpd.data.synthetic import write_synthetic_dataset

    try:
        take_legacy_out(args, "cpd synth", "data/synth")
        summary = write_synthetic_dataset(
            args.out, num_videos=args.num_videos, seed=args.seed, workers=args.workers,
            width=args.width, height=args.height, num_frames=args.num_frames, fps=args.fps,
            motions_per_group=args.motions_per_group, val_fraction=args.val_fraction,
            force=args.force, progress=not args.quiet,
        )  # fmt: skip
    except CPDError as exc:
        print(f"cpd synth: error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0
