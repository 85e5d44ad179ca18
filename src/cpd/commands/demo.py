"""Run the whole CPD story on the embedded synthetic dataset: no network, no weights to fetch.

Five stages, each announced as "[i/5] stage ... (elapsed, ETA)", with the underlying progress
bars on stderr:

  1. synthetic data   OUT/data: the embedded dataset (as `cpd synth`), glyphs doing one of 8
                      motions with natural captions; reused if it was written with the same
                      settings
  2. pretraining      OUT/pretrain: preset pretrain_synthetic_cpu (as `cpd pretrain`);
                      resumed from its last checkpoint if it was interrupted, reused if done
  3. evaluation       the exported model on the val videos: text->video retrieval of their
                      captions (R@1/5/10, median rank) and zero-shot classification into the
                      8 motion classes from the class names
  4. linear probes    preset linear_synthetic_cpu on the motion classes (as `cpd finetune`):
                      the pretrained encoder against the same architecture with random weights
                      (OUT/probe_pretrained, OUT/probe_random)
  5. report           one table (metric, value, chance) on stdout; OUT/report.md,
                      OUT/results.json (every metric with its chance level, settings, seeds,
                      seconds per stage) and OUT/figures/*.png (loss curve, val recall curve,
                      zero-shot confusion matrix, frames of top-3 retrieved videos)

Nothing is asserted about the outcome: the figures are reported as measured, each beside its
chance level. Rerunning with the same OUT continues where it stopped; a stage whose inputs or
settings changed is redone with everything after it; --force starts over.

--quick is the small version for CI: 160 videos, 4 pretraining epochs, probes on 2 clips per
video (a few minutes on 2 CPU cores; the full demo is 480 videos and the preset's epochs).

Examples:
  cpd demo                       # into runs/demo
  cpd demo -o runs/demo_ci --quick
  cpd demo -o runs/demo --force --seed 1
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cpd.commands._options import EXIT_STOPPED, add_run_options

HELP = "run the whole pipeline on the synthetic dataset: data, pretraining, evaluation, report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cpd demo``."""
    parser.add_argument("--quick", action="store_true",
                        help="small version for CI: 160 videos, 4 pretraining epochs, "
                        "smaller probes")  # fmt: skip
    parser.add_argument("--force", action="store_true",
                        help="start over: delete the demo's earlier outputs in OUT first")  # fmt: skip
    add_run_options(parser, out="runs/demo", legacy_out=True, device=False, seed=True,
                    quiet=False)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the demo; see the module docstring for the exit statuses."""
    from cpd.commands._options import exit_status, take_legacy_out
    from cpd.demo import DemoSettings, run_demo
    from cpd.errors import CPDError

    try:
        take_legacy_out(args, "cpd demo", "runs/demo")
    except CPDError as exc:
        return exit_status("demo", exc)
    if min(args.workers, args.seed, args.threads) < 0:
        print("cpd demo: --workers, --seed and --threads must be >= 0", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # the presets' run.threads=0 leaves this in place
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = DemoSettings(Path(args.out), quick=args.quick, seed=args.seed,
                            workers=args.workers, force=args.force)  # fmt: skip
    try:
        run_demo(settings)
    except (CPDError, KeyboardInterrupt) as exc:
        status = exit_status("demo", exc)
        if status == EXIT_STOPPED:
            print(f"cpd demo: rerun `cpd demo -o {args.out}` to continue", file=sys.stderr)
        return status
    return 0
