"""The ``cpd`` command: a thin dispatcher to one module per subcommand.

Each module in ``cpd.commands`` defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs (or for its ``--help``),
so the top-level ``cpd --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cpd import __version__
from cpd.commands._options import EXIT_HELP

# command name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "cpd.commands.demo",
        "the whole pipeline on the synthetic dataset: data, pretraining, evaluation, report",
    ),
    "synth": ("cpd.commands.synth", "write the embedded synthetic video-caption dataset"),
    "prepare": (
        "cpd.commands.prepare",
        "trim web videos to their middle 20 s at short side 256 and write their caption list",
    ),
    "pretrain": (
        "cpd.commands.pretrain",
        "pretrain the video encoder on video-caption pairs (CPD)",
    ),
    "finetune": (
        "cpd.commands.finetune",
        "finetune a pretrained video encoder on labelled actions, or train a linear probe",
    ),
    "test": (
        "cpd.commands.test",
        "multi-view (10x3) action recognition test of a finetuned classifier",
    ),
    "zeroshot": ("cpd.commands.zeroshot", "zero-shot action recognition from class-name text"),
    "retrieval": (
        "cpd.commands.retrieval",
        "text<->video retrieval (R@1/5/10, median / mean rank)",
    ),
    "embed": (
        "cpd.commands.embed",
        "write video or text embeddings with their ids (.npy, safetensors)",
    ),
    "export": (
        "cpd.commands.export",
        "export a checkpoint (ours or official) to safetensors + config",
    ),
    "bench": ("cpd.commands.bench", "speed benchmarks (clip loading, training step)"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Build the top-level parser; only the subcommand named in ``argv`` is imported."""
    parser = argparse.ArgumentParser(
        prog="cpd",
        description="CPD: video representation learning from video-text pairs.",
    )
    parser.add_argument("--version", action="version", version=f"cpd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if name in argv:
            module = importlib.import_module(module_name)
            p = sub.add_parser(
                name,
                help=help_text,
                description=module.__doc__,
                epilog=EXIT_HELP,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cpd`` command; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
