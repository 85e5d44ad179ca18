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

Exit status: 0 done, 2 bad settings, 1 bad data or checkpoints, 128 + signal number when
SIGTERM / Ctrl-C stopped it (pretraining stops with a checkpoint; rerun to continue).

Examples:
  cpd demo                       # into runs/demo
  cpd demo runs/demo_ci --quick
  cpd demo runs/demo --force --seed 1
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

HELP = "run the whole pipeline on the synthetic dataset: data, pretraining, evaluation, report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cpd demo``."""
    parser.add_argument("out", nargs="?", default="runs/demo", metavar="OUT",
                        help="output directory (default runs/demo)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="small version for CI: 160 videos, 4 pretraining epochs, "
                        "smaller probes")  # fmt: skip
    parser.add_argument("--force", action="store_true",
                        help="start over: delete the demo's earlier outputs in OUT first")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2,
                        help="processes rendering the videos and loading the evaluation "
                        "videos (default 2)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the dataset, pretraining, probes and example queries "
                        "(default 0)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default 0: torch's choice; 1 helps on a "
                        "machine that other jobs keep busy)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the demo; see the module docstring for the exit statuses."""
    from cpd.commands._training import error_status, stopped_status
    from cpd.demo import DemoSettings, run_demo
    from cpd.errors import CPDError
    from cpd.train.run import TrainingInterrupted

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
    except TrainingInterrupted as exc:
        print(f"cpd demo: {exc}\ncpd demo: rerun `cpd demo {args.out}` to continue",
              file=sys.stderr)  # fmt: skip
        return stopped_status(exc)
    except KeyboardInterrupt:  # outside pretraining, which stops with a checkpoint itself
        print(f"cpd demo: interrupted; rerun `cpd demo {args.out}` to continue", file=sys.stderr)
        return 128 + signal.SIGINT
    except CPDError as exc:
        return error_status("demo", exc)
    return 0
