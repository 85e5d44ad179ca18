"""What ``cpd pretrain``, ``cpd finetune`` and ``cpd demo`` share: config resolution, exit
statuses, logging."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

# shared flag -> the config key it sets (``cpd pretrain`` / ``cpd finetune``)
FLAG_KEYS = {"out": "run.out", "seed": "run.seed", "device": "run.device",
             "batch_size": "optim.batch_size", "workers": "data.workers",
             "threads": "run.threads", "video_root": "data.video_root",
             "manifest": "data.manifest"}  # fmt: skip


def add_training_options(parser: argparse.ArgumentParser, *, manifest: bool,
                         config_help: str, example: str) -> None:  # fmt: skip
    """``--config --print-config key=value...`` and the shared options as shortcuts for their
    config keys (the preset's values when not given)."""
    from cpd.commands._options import SHARED_OPTIONS, add_option

    parser.add_argument("--config", metavar="FILE|PRESET", help=config_help)
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration as YAML and exit")  # fmt: skip
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"config overrides, e.g. {example}")  # fmt: skip
    g = parser.add_argument_group("shared options (each sets its config key; default: the "
                                  "config's value)")  # fmt: skip
    names = [n for n in FLAG_KEYS if manifest or n != "manifest"]
    for name in names:
        meaning = SHARED_OPTIONS[name].meaning
        kind = int if name in ("seed", "batch_size", "workers", "threads") else str
        extra = {"choices": ("auto", "cpu", "cuda")} if name == "device" else {}
        g.add_argument(*SHARED_OPTIONS[name].flags, dest=name, default=None, type=kind,
                       help=f"{meaning} ({FLAG_KEYS[name]})", **extra)  # fmt: skip
    add_option(g, "quiet", help="no progress bars (run.progress=false)")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The ``key=value`` overrides the shared flags given stand for (before the positional
    ones, which therefore win)."""
    # JSON strings are YAML strings: a path such as "{a,b}.jsonl" stays a string
    out = [f"{key}={json.dumps(getattr(args, name))}" for name, key in FLAG_KEYS.items()
           if getattr(args, name, None) is not None]  # fmt: skip
    if getattr(args, "quiet", False):
        out.append("run.progress=false")
    return out


def run_training(
    name: str,
    load: Callable[[str | None, list[str]], Any],
    train: Callable[[], Callable[[Any], Any]],
    args: argparse.Namespace,
) -> int:
    """Resolve the config with ``load`` and run ``train()(cfg)``.

    ``train`` returns the entry point, so that the training modules import only when a run
    starts (not for ``--print-config``). Exit status: see
    :data:`cpd.commands._options.EXIT_STATUSES`.
    """
    import yaml

    from cpd.commands._options import exit_status
    from cpd.config import to_dict
    from cpd.errors import CPDError

    try:
        cfg = load(args.config, [*flag_overrides(args), *args.overrides])
    except CPDError as exc:
        return exit_status(name, exc)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    main_rank = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if main_rank:  # open_clip's batch size is per GPU; ours is the total
        total = cfg.optim.batch_size
        print(f"cpd {name}: batch size {total} in all = {total // max(1, world)} per process x "
              f"{world} process{'es' if world > 1 else ''}", file=sys.stderr)  # fmt: skip
    try:
        train()(cfg)
    except (CPDError, KeyboardInterrupt) as exc:
        return exit_status(name, exc, speak=main_rank)  # only rank 0 speaks
    return 0
