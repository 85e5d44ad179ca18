"""What ``cpd pretrain``, ``cpd finetune`` and ``cpd demo`` share: config resolution, exit
statuses, logging."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any


def stopped_status(exc: Exception) -> int:
    """Exit status of a run a signal stopped (a ``TrainingInterrupted``): 128 + its number."""
    return 128 + int(getattr(signal, getattr(exc, "signal_name", ""), signal.SIGTERM))


def error_status(command: str, exc: Exception) -> int:
    """Print ``cpd COMMAND: exc`` on stderr; the exit status: 2 for bad settings, else 1."""
    from cpd.config import ConfigError

    print(f"cpd {command}: {exc}", file=sys.stderr)
    return 2 if isinstance(exc, ConfigError) else 1


def run_training(
    name: str,
    load: Callable[[str | None, list[str]], Any],
    train: Callable[[], Callable[[Any], Any]],
    args: argparse.Namespace,
) -> int:
    """Resolve the config with ``load`` and run ``train()(cfg)``.

    ``train`` returns the entry point, so that the training modules import only when a run
    starts (not for ``--print-config``). Exit status: 0 done, 2 bad settings, 1 other bad input,
    128 + signal number when SIGTERM / SIGINT stopped the run with a checkpoint.
    """
    import yaml

    from cpd.config import to_dict
    from cpd.errors import CPDError
    from cpd.train.run import TrainingInterrupted

    try:
        cfg = load(args.config, args.overrides)
    except CPDError as exc:
        print(f"cpd {name}: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    main_rank = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        train()(cfg)
    except TrainingInterrupted as exc:
        if main_rank:  # the process group is gone by now: only rank 0 speaks
            print(f"cpd {name}: {exc}", file=sys.stderr)
        return stopped_status(exc)
    except CPDError as exc:
        return error_status(name, exc)
    return 0
