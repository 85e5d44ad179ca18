"""Options of the evaluation commands (test, zeroshot, retrieval, embed): the action dataset,
the clip views, and running a command body with the shared exit statuses."""

from __future__ import annotations

import argparse
from typing import Any

from cpd.commands._options import EXIT_OK, add_deprecated, add_option, exit_status, warn_deprecated
from cpd.data.action_sets import ACTION_DATASETS
from cpd.errors import DataError

__all__ = [
    "add_dataset_options",
    "add_view_options",
    "load_split_of",
    "per_process_batch",
    "resolve_view_arguments",
    "run_command",
    "view_options",
    "view_protocol",
]

_SPLITS = ("test", "train", "all")


class _SplitOrFold(argparse.Action):
    """``--split NAME``; a number (older releases' ``--split 1 2 3``) means ``--fold``
    (a list of them where ``several`` folds are taken)."""

    def __init__(self, option_strings: list[str], dest: str, *, several: bool, **kwargs: Any):
        self.several = several
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        values = list(values)
        if all(v.isdigit() for v in values):
            warn_deprecated(parser.prog, f"--split {' '.join(values)} (a split number)",
                            f"--fold {' '.join(values)}")  # fmt: skip
            folds = [int(v) for v in values]
            namespace.fold = folds if self.several else folds[0]
            return
        if len(values) != 1 or values[0] not in _SPLITS:
            parser.error(f"--split: one of {', '.join(_SPLITS)}, got {' '.join(values)}")
        namespace.split = values[0]


def add_dataset_options(parser: argparse.ArgumentParser, *, several_folds: bool) -> None:
    """``--dataset --fold --split --video-root --split-dir --csv --classes``
    (see :mod:`cpd.data.action_sets`)."""
    g = parser.add_argument_group("dataset")
    g.add_argument("--dataset", required=True, choices=ACTION_DATASETS,
                   help="dataset / list format")  # fmt: skip
    add_option(g, "fold", type=int, nargs="+" if several_folds else None, metavar="N",
               default=[1] if several_folds else 1)  # fmt: skip
    g.add_argument("--split", action=_SplitOrFold, nargs="+", default="test", metavar="NAME",
                   several=several_folds,
                   help="which videos of the fold: test (default), train or all")  # fmt: skip
    add_option(g, "video_root", metavar="DIR", help="folder of the videos (<root>/<Class>/<video>)")
    g.add_argument("--split-dir", help="folder of the official list files")
    g.add_argument("--csv", help="for --dataset csv: the CSV file (video,label[,split])")
    g.add_argument("--classes", help="for --dataset csv: class names, one per line, in order")
    add_deprecated(g, "--subset", "--split", "split", choices=_SPLITS)


def load_split_of(args: argparse.Namespace, fold: int) -> Any:
    """The records of ``args.split`` of official split ``fold`` of the ``--dataset`` options."""
    from cpd.data.action_sets import load_action_dataset

    return load_action_dataset(args.dataset, fold, args.split, video_root=args.video_root,
                               split_dir=args.split_dir, csv=args.csv, classes=args.classes)  # fmt: skip


def per_process_batch(batch_size: int, world_size: int) -> int:
    """Each process's share of a ``--batch-size`` that is the total over all processes."""
    return max(1, batch_size // max(1, world_size))


# --- views ---------------------------------------------------------------------------------

_FALLBACK_FPS = 30.0
_FALLBACK_MEAN = (0.45, 0.45, 0.45)
_FALLBACK_STD = (0.225, 0.225, 0.225)
VIEW_KEYS = ("num_frames", "stride", "crop_size", "fps", "mean", "std")
_VIEWS_HELP = """\
--num-frames, --stride, --crop-size, --fps, --mean and --std default to what the checkpoint
records: an export's config.json "preprocessing" (written by cpd pretrain / cpd finetune), a
training checkpoint's run config. The values after "else" are for checkpoints that record none
(official ones, older exports). Flags given win."""


def add_view_options(
    parser: argparse.ArgumentParser, *, clips: int, crops: int, frames: int = 16, crop: int = 112
) -> None:
    """Clip geometry: ``--num-clips --num-crops`` and ``--num-frames --stride --crop-size --fps
    --mean --std``.

    The last six default to the checkpoint's preprocessing (``config.json`` of an export, the
    run config in a training checkpoint: what the model was trained with, the test crop for
    ``--crop-size``); ``frames``, stride 4, ``crop``, 30 fps and cpd's mean / std are the
    fallbacks for checkpoints that record none (official ones, older exports). Call
    :func:`resolve_view_arguments` once the model is loaded.
    """
    src = "default: the checkpoint's config.json preprocessing"
    g = parser.add_argument_group("views", _VIEWS_HELP)
    g.add_argument("--num-clips", type=int, default=clips,
                   help=f"uniformly spaced temporal clips per video (default {clips})")  # fmt: skip
    g.add_argument("--num-crops", type=int, default=crops,
                   help=f"spatial crops per clip along the long side (default {crops})")  # fmt: skip
    g.add_argument("--num-frames", type=int, default=None,
                   help=f"frames per clip ({src} num_frames, else {frames})")  # fmt: skip
    g.add_argument("--stride", type=int, default=None,
                   help=f"frame stride at --fps ({src} stride, else 4)")  # fmt: skip
    g.add_argument("--crop-size", type=int, default=None,
                   help=f"short side resize and crop size ({src} test_size, the size the "
                   f"model is tested at, else {crop})")  # fmt: skip
    g.add_argument("--fps", type=float, default=None,
                   help=f"frame rate the clip windows are laid out at ({src} fps, else 30)")  # fmt: skip
    g.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help=f"normalisation mean of [0, 1] RGB ({src} mean, else 0.45 0.45 0.45)")  # fmt: skip
    g.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help=f"normalisation std ({src} std, else 0.225 0.225 0.225)")  # fmt: skip
    parser.set_defaults(view_fallbacks={"num_frames": frames, "stride": 4, "crop_size": crop,
                                        "fps": _FALLBACK_FPS, "mean": _FALLBACK_MEAN,
                                        "std": _FALLBACK_STD})  # fmt: skip


def resolve_view_arguments(args: argparse.Namespace, model: Any) -> dict[str, str]:
    """Fill the view options left unset in ``args`` (``None``) from ``model.preprocessing``
    (see :func:`cpd.models.load_model`), else from the command's fallbacks; explicit flags are
    kept. Returns where each value came from: ``"flag"``, ``"checkpoint"`` or ``"built-in"``
    (results.json records it as ``protocol.view_settings_from``)."""
    pre = getattr(model, "preprocessing", None)
    from_checkpoint = {} if pre is None else {
        "num_frames": pre.num_frames, "stride": pre.stride, "crop_size": pre.test_size,
        "fps": pre.fps, "mean": pre.mean, "std": pre.std}  # fmt: skip
    fallbacks = getattr(args, "view_fallbacks", {})
    sources = {}
    for key in VIEW_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            sources[key] = "flag"
        elif key in from_checkpoint:
            value, sources[key] = from_checkpoint[key], "checkpoint"
        else:
            value, sources[key] = fallbacks[key], "built-in"
        if key in ("mean", "std"):
            value = [float(v) for v in value]
        setattr(args, key, value)
    for key in ("num_frames", "stride", "crop_size"):
        if getattr(args, key) < 1:
            raise DataError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.fps <= 0 or min(args.std) <= 0:
        raise DataError("--fps and --std must be positive")
    return sources


def view_options(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved view settings as :func:`cpd.eval.multiview.multiview_dataset` and
    :func:`cpd.eval.shards.embed_shards` take them."""
    return {"num_clips": args.num_clips, "num_crops": args.num_crops,
            "num_frames": args.num_frames, "stride": args.stride, "crop_size": args.crop_size,
            "fps": args.fps, "mean": tuple(args.mean), "std": tuple(args.std)}  # fmt: skip


def view_protocol(args: argparse.Namespace, sources: dict[str, str]) -> dict[str, Any]:
    """The view settings for results.json's protocol, with where each came from."""
    out = {k: getattr(args, k) for k in ("num_clips", "num_crops", *VIEW_KEYS)}
    out["view_settings_from"] = dict(sources)
    return out


# --- running -------------------------------------------------------------------------------


def run_command(name: str, body: Any, args: argparse.Namespace) -> int:
    """Run ``body(args)`` with ``--threads`` applied; bad input and signals become one line on
    stderr and the shared exit status (:data:`cpd.commands._options.EXIT_STATUSES`). Our own
    bugs (anything but :class:`~cpd.errors.CPDError`) propagate with their traceback."""
    from cpd.errors import CPDError

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return int(body(args) or EXIT_OK)
    except (CPDError, KeyboardInterrupt) as exc:
        return exit_status(name, exc)
