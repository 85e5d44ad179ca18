"""What the evaluation commands share: dataset options, the process group, the per-rank loader,
progress bars, ``results.json`` and the printed table.

Datasets (``--dataset``):

* ``ucf101`` / ``hmdb51``: the packaged official splits (``--split 1 2 3``) over the videos
  in ``--video-root``; with ``--split-dir`` the datasets' own list files instead
  (``ucfTrainTestlist/`` or ``testTrainMulti_7030_splits/``).
* ``ucf-layout``: any dataset in UCF101's list layout (``classInd.txt``, ``trainlist0N.txt``,
  ``testlist0N.txt`` in ``--split-dir``), such as ``cpd synth``'s ``OUT/ucfTrainTestlist``;
  ``--video-root`` defaults to the folder ``videos`` beside ``--split-dir``.
* ``csv``: ``--csv FILE`` with header ``video,label[,split]`` (``--classes`` fixes the order).

Several processes (``torchrun --nproc_per_node N -m cpd ...``): :func:`init_distributed` joins
the process group from torchrun's environment; every rank evaluates a share of the videos and
the results are gathered exactly (see :mod:`cpd.eval.multiview`). Only rank 0 prints or writes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cpd.data.actions import ActionSplit
from cpd.errors import CPDError, DataError
from cpd.runtime import Env, close_env, git_revision, init_env

__all__ = [
    "DATASETS",
    "EvalEnv",
    "add_common_arguments",
    "add_dataset_arguments",
    "add_view_arguments",
    "close_distributed",
    "init_distributed",
    "load_action_split",
    "make_eval_loader",
    "progress",
    "resolve_view_arguments",
    "results_header",
    "run_command",
    "view_options",
    "view_protocol",
    "write_results",
]

DATASETS = ("ucf101", "hmdb51", "ucf-layout", "csv")
T = TypeVar("T")


# --- options ------------------------------------------------------------------------------


def add_dataset_arguments(parser: argparse.ArgumentParser, *, several_splits: bool) -> None:
    """``--dataset --split --video-root --split-dir --csv --classes --subset``."""
    g = parser.add_argument_group("dataset")
    g.add_argument("--dataset", required=True, choices=DATASETS, help="dataset / list format")
    g.add_argument("--split", type=int, nargs="+" if several_splits else None, default=None,
                   help="split number(s) 1..3 (default 1)" if several_splits
                   else "split number 1..3 (default 1)")  # fmt: skip
    g.add_argument("--video-root", help="folder of the videos (<root>/<Class>/<video>)")
    g.add_argument("--split-dir", help="folder of the official list files (see above)")
    g.add_argument("--csv", help="for --dataset csv: the CSV file (video,label[,split])")
    g.add_argument("--classes", help="for --dataset csv: class names, one per line, in order")
    g.add_argument("--subset", default="test", choices=("test", "train", "all"),
                   help="which videos of the split (default test)")  # fmt: skip


_FALLBACK_FPS = 30.0
_FALLBACK_MEAN = (0.45, 0.45, 0.45)
_FALLBACK_STD = (0.225, 0.225, 0.225)
VIEW_KEYS = ("num_frames", "stride", "crop_size", "fps", "mean", "std")
_VIEWS_HELP = """\
--num-frames, --stride, --crop-size, --fps, --mean and --std default to what the checkpoint
records: an export's config.json "preprocessing" (written by cpd pretrain / cpd finetune), a
training checkpoint's run config. The values after "else" are for checkpoints that record none
(official ones, older exports). Flags given win."""


def add_view_arguments(
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


def add_common_arguments(parser: argparse.ArgumentParser, *, out: bool = True) -> None:
    """``--device --out --batch-size --workers --quiet``."""
    g = parser.add_argument_group("run")
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="cpu (default), cuda (one GPU per process under torchrun) or auto")  # fmt: skip
    if out:
        g.add_argument("--out", help="folder for results.json and other outputs (created)")
    g.add_argument("--batch-size", type=int, default=4,
                   help="videos per loader batch (default 4); the model sees one video's "
                   "views at a time")  # fmt: skip
    g.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (default: torch's choice; 1 helps tiny "
                   "models on busy machines)")  # fmt: skip


def load_action_split(args: argparse.Namespace, split: int) -> ActionSplit:
    """The records of ``args.subset`` of ``split`` for the ``--dataset`` options in ``args``."""
    from cpd.data import load_packaged_split, read_action_csv, read_hmdb51, read_ucf101

    subset = None if args.subset == "all" else args.subset
    if args.dataset == "csv":
        if not args.csv:
            raise DataError("--dataset csv needs --csv FILE")
        return read_action_csv(args.csv, args.video_root or Path(args.csv).parent, subset,
                               classes=args.classes)  # fmt: skip
    if args.dataset == "ucf-layout":
        if not args.split_dir:
            raise DataError("--dataset ucf-layout needs --split-dir (the folder of classInd.txt)")
        root = args.video_root or _default_video_root(Path(args.split_dir))
        return read_ucf101(args.split_dir, root, split, subset)
    if not args.video_root:
        raise DataError(f"--dataset {args.dataset} needs --video-root")
    if args.split_dir:
        reader = read_ucf101 if args.dataset == "ucf101" else read_hmdb51
        return reader(args.split_dir, args.video_root, split, subset)
    return load_packaged_split(args.dataset, split, args.video_root, subset)


def _default_video_root(split_dir: Path) -> Path:
    beside = split_dir.parent / "videos"
    return beside if beside.is_dir() else split_dir.parent


# --- processes ----------------------------------------------------------------------------


#: evaluation's name for :class:`cpd.runtime.Env` (the same class training uses)
EvalEnv = Env


def init_distributed(device: str, quiet: bool = False) -> Env:
    """:func:`cpd.runtime.init_env` with progress bars on rank 0 unless ``quiet``."""
    return init_env(device, show_progress=not quiet)


#: destroy the process group if :func:`init_distributed` created it
close_distributed = close_env


def make_eval_loader(
    dataset: Dataset, env: EvalEnv, *, batch_size: int, workers: int, collate_fn: Any
) -> DataLoader:
    """This rank's share of ``dataset`` in order: sample ``rank``, ``rank + W``, ...

    The sampler pads the shares to equal length by repeating samples from the start; the
    gather drops the repeats by index (:func:`cpd.eval.gather.gather_embeddings`).
    """
    sampler = DistributedSampler(
        dataset, num_replicas=env.world_size, rank=env.rank, shuffle=False, drop_last=False
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_fn, pin_memory=env.device.type == "cuda")  # fmt: skip


def progress(items: Iterable[T], *, total: int | None, desc: str, enabled: bool) -> Iterator[T]:
    """``items`` with a tqdm bar on stderr when ``enabled`` (rank 0, not ``--quiet``)."""
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    with tqdm(items, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True) as bar:
        yield from bar


# --- results ------------------------------------------------------------------------------


def results_header(command: str, checkpoint: str | None, env: EvalEnv | None) -> dict[str, Any]:
    """The provenance every results.json starts with."""
    import cpd

    return {
        "command": command,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "version": cpd.__version__,
        "git_revision": git_revision(),
        "torch": torch.__version__,
        "world_size": env.world_size if env else 1,
        "device": str(env.device) if env else "cpu",
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN (e.g. a std of one split) is not valid JSON
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_results(out: str | Path, results: dict[str, Any]) -> Path:
    """Write ``results`` to ``out/results.json`` (NaN / inf become null); returns the path."""
    path = Path(out) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(results), indent=2) + "\n", encoding="utf-8")
    return path


def run_command(name: str, body: Any, args: argparse.Namespace) -> int:
    """Run ``body(args)`` and turn bad input into one line on stderr and exit status 2.

    Our own bugs (anything but :class:`CPDError`) propagate with their traceback.
    """
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return int(body(args) or 0)
    except CPDError as exc:
        print(f"cpd {name}: error: {exc}", file=sys.stderr)
        return 2


def pct(value: float) -> str:
    """A fraction as a percentage with two decimals (``nan`` stays ``nan``)."""
    return "nan" if not math.isfinite(value) else f"{100 * value:.2f}"
