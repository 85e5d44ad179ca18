"""The options the commands share, each with one name and one meaning, and the exit statuses.

Every command that has such an option spells it as :data:`SHARED_OPTIONS` says; the README's
table of shared options is this table (``tests/test_cli_vocabulary.py`` walks every command's
parser against it). Names follow the field's tools: ``--out`` / ``--device`` / ``--seed`` /
``--batch-size`` / ``--workers`` as open_clip and mmaction2's tools spell them, and the
configuration keys behind ``cpd pretrain`` / ``cpd finetune``'s flags keep the same words
(``run.out``, ``data.video_root``, ``data.manifest``...).

Old spellings keep working for one release: they print which name replaces them
(:func:`add_deprecated`, :func:`take_legacy_out`).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_HELP",
    "EXIT_OK",
    "EXIT_STOPPED",
    "SHARED_OPTIONS",
    "SharedOption",
    "add_deprecated",
    "add_manifest_options",
    "add_run_options",
    "exit_status",
    "manifest_options",
    "take_legacy_out",
    "warn_deprecated",
]

# --- exit statuses ---------------------------------------------------------------------------

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3
EXIT_STATUSES = {
    EXIT_OK: "done",
    EXIT_FAILED: "the run failed: training diverged, some inputs could not be processed "
    "(cpd prepare), or an internal error (printed with its traceback)",
    EXIT_BAD_INPUT: "bad input or configuration: an unknown or invalid option or config key, "
    "a missing or malformed file, manifest, dataset or checkpoint",
    EXIT_STOPPED: "stopped by a signal (SIGTERM, Ctrl-C); pretrain, finetune and demo leave "
    "a checkpoint of that step: rerun the same command to continue",
}
EXIT_HELP = "exit status:\n" + "\n".join(
    textwrap.fill(v, 79, initial_indent=f"  {k}  ", subsequent_indent="     ")
    for k, v in EXIT_STATUSES.items()
)


def exit_status(command: str, exc: BaseException, *, speak: bool = True) -> int:
    """The status of the table above for ``exc``, after ``cpd COMMAND: error: exc`` on stderr
    (unless not ``speak``: the ranks other than 0 of a torchrun job).

    Only :class:`~cpd.errors.CPDError` (and ``KeyboardInterrupt``) come here: our own bugs
    propagate with their traceback (Python's exit status 1).
    """
    from cpd.train.run import TrainingDiverged, TrainingInterrupted

    stopped = isinstance(exc, (TrainingInterrupted, KeyboardInterrupt))
    if speak:
        what = f"stopped: {exc or 'interrupted'}" if stopped else f"error: {exc}"
        print(f"cpd {command}: {what}", file=sys.stderr)
    if stopped:
        return EXIT_STOPPED
    return EXIT_FAILED if isinstance(exc, TrainingDiverged) else EXIT_BAD_INPUT


# --- the shared options ----------------------------------------------------------------------


@dataclass(frozen=True)
class SharedOption:
    """One shared option: its flags, its default (``None`` = differs by command, see
    ``default_note``), what it means, and the config key it sets in pretrain / finetune."""

    flags: tuple[str, ...]
    default: Any
    meaning: str
    config_key: str | None = None
    default_note: str = ""


SHARED_OPTIONS: dict[str, SharedOption] = {
    "out": SharedOption(
        ("-o", "--out"),
        None,
        "output directory: results.json, checkpoints, files written",
        "run.out",
        "runs/COMMAND (data/synth for synth; required by prepare and export)",
    ),
    "video_root": SharedOption(
        ("--video-root",),
        None,
        "folder the video paths are relative to",
        "data.video_root",
        "the manifest's or list's folder",
    ),
    "manifest": SharedOption(
        ("--manifest",),
        None,
        "video-caption manifest (.jsonl, .csv, .tsv, .json, .parquet, Instagram .json)",
        "data.manifest",
    ),
    "manifest_format": SharedOption(
        ("--manifest-format",),
        "auto",
        "manifest format (auto: from the content and suffix)",
        "data.manifest_format",
    ),
    "video_key": SharedOption(
        ("--video-key",),
        "video",
        "manifest column of the video path, or a template such as '{videoid}.mp4'",
        "data.video_key",
    ),
    "caption_key": SharedOption(
        ("--caption-key",), "caption", "manifest column of the caption", "data.caption_key"
    ),
    "id_key": SharedOption(
        ("--id-key",), "id", "manifest column of the video id (optional)", "data.id_key"
    ),
    "bad_rows": SharedOption(
        ("--bad-rows",),
        "error",
        "bad manifest rows: error (one error "
        "listing them all) or skip (left out, written to "
        "OUT/bad_rows.jsonl)",
        "data.bad_rows",
    ),
    "split": SharedOption(
        ("--split",),
        None,
        "which part of the data: a manifest's split "
        "(train, val, test, all) or a UCF101 / HMDB51 list's (train, test, "
        "all)",
        None,
        "val for retrieval, test for test / zeroshot, every row for prepare",
    ),
    "fold": SharedOption(
        ("--fold",),
        None,
        "UCF101 / HMDB51 official split number(s) 1..3",
        "data.fold",
        "1",
    ),
    "device": SharedOption(
        ("--device",),
        "auto",
        "auto (a GPU when there is one), cpu, cuda (one GPU per process under torchrun)",
        "run.device",
    ),
    "seed": SharedOption(("--seed",), 0, "seed of everything random", "run.seed"),
    "batch_size": SharedOption(
        ("--batch-size",),
        None,
        "batch size, TOTAL over all processes "
        "(each of N processes takes 1/N; open_clip's is per GPU)",
        "optim.batch_size",
        "the preset's for training, 4 videos for evaluation",
    ),
    "workers": SharedOption(
        ("--workers",),
        None,
        "DataLoader workers (or worker processes) per process",
        "data.workers",
        "2 (the preset's for training; the CPU count for prepare)",
    ),
    "threads": SharedOption(
        ("--threads",),
        0,
        "torch CPU threads per process (0: torch's choice; 1 helps small models on busy machines)",
        "run.threads",
    ),
    "quiet": SharedOption(("--quiet",), False, "no progress bars", "run.progress=false"),
}


def _help(name: str, default: Any = None) -> str:
    opt = SHARED_OPTIONS[name]
    shown = default if default is not None else opt.default
    suffix = "" if shown is None or shown is False or shown == "" else f" (default {shown})"
    return opt.meaning + suffix


def add_option(group: Any, name: str, *, default: Any = None, **kwargs: Any) -> None:
    """Add shared option ``name`` to ``group`` (a parser or argument group) with its flags and
    meaning; ``default`` overrides the table's for commands whose default differs."""
    opt = SHARED_OPTIONS[name]
    value = default if default is not None else opt.default
    if name == "quiet":
        group.add_argument(*opt.flags, action="store_true", help=kwargs.get("help", _help(name)))
        return
    kwargs.setdefault("help", _help(name, value))
    group.add_argument(*opt.flags, dest=name, default=value, **kwargs)


def add_run_options(
    parser: argparse.ArgumentParser,
    *,
    out: str | None = None,
    out_required: bool = False,
    legacy_out: bool = False,
    device: bool = True,
    seed: bool = False,
    batch_size: int | None = None,
    workers: int | None = 2,
    threads: bool = True,
    quiet: bool = True,
) -> None:
    """``-o/--out``, ``--device``, ``--seed``, ``--batch-size``, ``--workers``, ``--threads``,
    ``--quiet``: those of them this command has, with its defaults."""
    g = parser.add_argument_group("run")
    if legacy_out:  # the default comes in take_legacy_out, once the positional is known
        add_legacy_out(parser)
        g.add_argument(*SHARED_OPTIONS["out"].flags, dest="out", default=None, metavar="DIR",
                       help=_help("out", out))  # fmt: skip
    elif out is not None or out_required:
        add_option(g, "out", default=out, required=out_required, metavar="DIR")
    if device:
        add_option(g, "device", choices=("auto", "cpu", "cuda"))
    if seed:
        add_option(g, "seed", type=int)
    if batch_size is not None:
        add_option(g, "batch_size", default=batch_size, type=int, metavar="N")
    if workers is not None:
        add_option(g, "workers", default=workers, type=int, metavar="N")
    if threads:
        add_option(g, "threads", type=int, metavar="N")
    if quiet:
        add_option(g, "quiet")


def add_manifest_options(group: Any, *, manifest: bool = True, video_root: bool = True) -> None:
    """How to read a caption manifest: ``--manifest --video-root --manifest-format --video-key
    --caption-key --id-key --bad-rows`` (as ``cpd pretrain``'s ``data.*`` keys of those names)."""
    from cpd.data.manifests import FORMATS

    if manifest:
        add_option(group, "manifest", metavar="FILE")
    if video_root:
        add_option(group, "video_root", metavar="DIR")
    add_option(group, "manifest_format", choices=("auto", *FORMATS), metavar="FORMAT",
               help=f"{_help('manifest_format')}: {', '.join(FORMATS)}")  # fmt: skip
    for name in ("video_key", "caption_key", "id_key"):
        add_option(group, name, metavar="KEY")
    add_option(group, "bad_rows", choices=("error", "skip"))


def manifest_options(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`cpd.data.read_caption_manifest` keyword arguments from the manifest options."""
    return {"format": None if args.manifest_format == "auto" else args.manifest_format,
            "video_key": args.video_key, "caption_key": args.caption_key,
            "id_key": args.id_key, "bad_rows": args.bad_rows}  # fmt: skip


# --- old spellings ---------------------------------------------------------------------------


def warn_deprecated(prog: str, old: str, new: str) -> None:
    """Tell stderr that ``old`` is deprecated in favour of ``new``."""
    print(f"{prog}: {old} is deprecated and goes in the next release; use {new}",
          file=sys.stderr)  # fmt: skip


class _Deprecated(argparse.Action):
    """Stores like the option it stands for, after saying which option replaces it."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        warn_deprecated(parser.prog, str(option_string), self.new)
        setattr(namespace, self.dest, values)


def add_deprecated(group: Any, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """Accept the old flag ``old`` for ``new`` (stored into ``dest``), hidden from ``--help``."""
    group.add_argument(old, dest=dest, action=_Deprecated, new=new, default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS, **kwargs)  # fmt: skip


def add_legacy_out(parser: argparse.ArgumentParser) -> None:
    """The positional output directory older releases took (see :func:`take_legacy_out`)."""
    parser.add_argument("legacy_out", nargs="?", default=None, help=argparse.SUPPRESS)


def take_legacy_out(args: argparse.Namespace, prog: str, default: str | None) -> None:
    """Set ``args.out``: ``-o/--out``, else a positional output directory (the old spelling,
    with a word on stderr), else ``default``. Both at once is bad input (``ConfigError``)."""
    legacy = getattr(args, "legacy_out", None)
    if legacy is not None:
        if args.out is not None:
            from cpd.config import ConfigError

            raise ConfigError(f"give the output directory once, as -o/--out (got {legacy} too)")
        warn_deprecated(prog, f"a positional output directory ({legacy})", f"-o/--out {legacy}")
        args.out = legacy
    if args.out is None:
        args.out = default
