"""What ``cpd pretrain`` and ``cpd finetune`` share: config resolution, exit statuses, logging."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any


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

    from cpd.config import ConfigError, to_dict
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
        return 128 + int(getattr(signal, exc.signal_name, signal.SIGTERM))
    except ConfigError as exc:
        print(f"cpd {name}: {exc}", file=sys.stderr)
        return 2
    except CPDError as exc:
        print(f"cpd {name}: {exc}", file=sys.stderr)
        return 1
    return 0
