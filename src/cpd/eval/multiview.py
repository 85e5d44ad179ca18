"""Multi-view testing: every view of a video on one rank, video outputs gathered exactly.

The protocol (the paper's): ``num_clips`` uniformly spaced temporal clips x ``num_crops``
spatial crops per video (10 x 3 by default), short side resized to the crop size. The video's
score is the mean of its views' raw logits, as the official ``test.py`` computes it
(``calculate_video_results``: ``torch.mean(torch.stack(output_buffer), dim=0)`` of the model
outputs, then ``topk``); the prediction is its argmax. ``scores="softmax"`` averages the views'
softmax probabilities instead (a different, not the official, video score: one confident view
weighs less than in the logit mean).

Exact under several processes. The official code distributed *views* over ranks, so a
video's views were split between processes, each reported a partial average and the
sampler's padding counted videos twice. Here the unit of distribution is the *video*: a
:class:`~torch.utils.data.DistributedSampler` over videos gives each rank whole videos, each
rank loads all views of its videos and runs them through the model as one batch (the same
batch whatever the number of processes, so the same numbers), and the per-video results are
all-gathered with their dataset indices; :func:`~cpd.eval.gather.gather_embeddings` drops the
sampler's padded repeats and checks that every video arrived once.

Videos that fail to decode are not replaced (the datasets' training policy would swap in
another video, which would silently change the test set): the loader wrapper
:class:`NoReplaceLoader` turns the failure into a :class:`DecodeFailure` value, the video's
row is NaN, and the failures are gathered with their reasons. Metrics are computed over the
videos that were evaluated; the number and names of failed videos are reported beside them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cpd.errors import VideoDecodeError
from cpd.eval.common import EvalEnv, make_eval_loader, progress
from cpd.eval.gather import gather_embeddings

__all__ = [
    "DecodeFailure",
    "NoReplaceLoader",
    "SCORES",
    "VideoOutputs",
    "classification_metrics",
    "classifier_scores",
    "collect_video_outputs",
    "iter_video_outputs",
    "multiview_dataset",
]


@dataclass(frozen=True)
class DecodeFailure:
    """Stands in for a video's views when the file cannot be decoded."""

    path: str
    reason: str


class NoReplaceLoader:
    """Wraps a view loader (``load_clips``): a decode failure becomes a :class:`DecodeFailure`
    value instead of an exception, so the dataset's replace-on-failure policy never runs."""

    def __init__(self, loader: Callable[..., torch.Tensor]) -> None:
        self.loader = loader

    def __call__(self, path: str | os.PathLike, **kwargs: Any) -> torch.Tensor | DecodeFailure:
        try:
            return self.loader(path, **kwargs)
        except VideoDecodeError as exc:
            return DecodeFailure(str(path), exc.reason)


def multiview_dataset(
    records: Sequence[Any],
    *,
    num_clips: int,
    num_crops: int,
    num_frames: int,
    stride: int,
    crop_size: int,
    loader: Callable[..., torch.Tensor] | None = None,
    fps: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Any:
    """An :class:`~cpd.data.ActionDataset` in test mode whose failures are not replaced.

    ``records`` are ``ActionRecord``s (labels used) numbered 0..N-1; ``loader`` defaults to
    :func:`cpd.video.load_clips` (``FrameCache.load_clips`` works too). ``fps`` / ``mean`` /
    ``std``, when given, are passed to the loader as ``target_fps`` / ``mean`` / ``std``
    (None: the loader's defaults, 30 fps and cpd's normalisation).
    """
    import functools

    from cpd.data import ActionDataset
    from cpd.video import load_clips

    for name, value in (("num_clips", num_clips), ("num_crops", num_crops),
                        ("num_frames", num_frames), ("stride", stride), ("crop_size", crop_size)):  # fmt: skip
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    extra = clip_overrides(fps, mean, std)
    load = loader or load_clips
    if extra:
        load = functools.partial(load, **extra)
    return ActionDataset(records, train=False, num_clips=num_clips, num_crops=num_crops,
                         num_frames=num_frames, stride=stride, crop_size=crop_size,
                         multiview_loader=NoReplaceLoader(load))  # fmt: skip


def _keep_list(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # videos are forwarded one at a time: no stacking (and failures are not tensors)
    return samples


@dataclass
class VideoOutputs:
    """Per-video outputs of all ranks, in dataset order.

    ``values [N, D]`` float64 (NaN rows for failed videos), ``index [N]`` = 0..N-1,
    ``failed`` maps dataset index -> (path, reason).
    """

    values: torch.Tensor
    index: torch.Tensor
    failed: dict[int, tuple[str, str]] = field(default_factory=dict)

    @property
    def ok(self) -> torch.Tensor:
        """bool ``[N]``: the videos that were evaluated."""
        mask = torch.ones(len(self.index), dtype=torch.bool)
        mask[list(self.failed)] = False
        return mask


def clip_overrides(
    fps: float | None, mean: Sequence[float] | None, std: Sequence[float] | None
) -> dict[str, Any]:
    """The clip loaders' ``target_fps`` / ``mean`` / ``std`` keywords for the settings given
    (``None``: the loader's default)."""
    extra: dict[str, Any] = {}
    if fps is not None:
        extra["target_fps"] = float(fps)
    if mean is not None:
        extra["mean"] = tuple(float(v) for v in mean)
    if std is not None:
        extra["std"] = tuple(float(v) for v in std)
    return extra


@torch.no_grad()
def iter_video_outputs(
    dataset: Any,
    fn: Callable[[torch.Tensor], torch.Tensor],
    env: EvalEnv,
    *,
    dim: int,
    batch_size: int = 4,
    workers: int = 0,
    desc: str = "videos",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[tuple[int, str, str]]]]:
    """This rank's outputs of ``fn`` (see :func:`collect_video_outputs`), one loader batch at a
    time: ``(index [b] int64, values [b, dim] float64 on the CPU, failures)``, a failed video
    a NaN row and a ``(index, path, reason)`` entry. Not collective; the rank's share is the
    sampler's (see the module docstring), padding repeats included."""
    loader = make_eval_loader(dataset, env, batch_size=batch_size, workers=workers,
                              collate_fn=_keep_list)  # fmt: skip
    bar = progress(loader, total=len(loader), desc=desc, enabled=env.show_progress)
    for batch in bar:
        rows: list[torch.Tensor] = []
        failed: list[tuple[int, str, str]] = []
        for sample in batch:
            views = sample["video"]
            if isinstance(views, DecodeFailure):
                failed.append((int(sample["index"]), views.path, views.reason))
                row = torch.full((dim,), float("nan"), dtype=torch.float64)
            else:
                row = fn(views.to(env.device, non_blocking=True)).double().cpu()
                if row.shape != (dim,):
                    raise ValueError(f"fn returned shape {tuple(row.shape)}, expected ({dim},)")
            rows.append(row)
        index = torch.tensor([int(s["index"]) for s in batch], dtype=torch.int64)
        values = torch.stack(rows) if rows else torch.zeros(0, dim, dtype=torch.float64)
        yield index, values, failed


@torch.no_grad()
def collect_video_outputs(
    dataset: Any,
    fn: Callable[[torch.Tensor], torch.Tensor],
    env: EvalEnv,
    *,
    dim: int,
    batch_size: int = 4,
    workers: int = 0,
    desc: str = "videos",
) -> VideoOutputs:
    """Apply ``fn(views [V, 3, T, S, S] on env.device) -> [dim]`` to every video of ``dataset``.

    Each rank handles whole videos (see the module docstring); the results of all ranks are
    gathered, deduplicated and checked complete. Collective under a process group: call it on
    every rank. Every rank returns the same :class:`VideoOutputs`.
    """
    values: list[torch.Tensor] = []
    indices: list[torch.Tensor] = []
    failed: list[tuple[int, str, str]] = []
    for index, rows, batch_failed in iter_video_outputs(
        dataset, fn, env, dim=dim, batch_size=batch_size, workers=workers, desc=desc
    ):
        indices.append(index)
        values.append(rows)
        failed += batch_failed
    local = torch.cat(values) if values else torch.zeros(0, dim, dtype=torch.float64)
    local_index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64)
    # gloo gathers CPU tensors, NCCL CUDA ones
    gather_device = env.device if env.world_size > 1 and env.device.type == "cuda" else "cpu"
    values_all, index_all = gather_embeddings(
        local.to(gather_device), local_index.to(gather_device), num_samples=len(dataset)
    )
    return VideoOutputs(values_all.cpu(), index_all.cpu(), _gather_failures(failed, env))


def _gather_failures(local: list[tuple[int, str, str]], env: EvalEnv) -> dict[int, tuple[str, str]]:
    if env.world_size > 1:
        import torch.distributed as tdist

        parts: list[Any] = [None] * env.world_size
        tdist.all_gather_object(parts, local)
        local = [item for part in parts for item in part]
    return {i: (path, reason) for i, path, reason in sorted(local)}


SCORES = ("logits", "softmax")


def classifier_scores(model: torch.nn.Module, scores: str = "logits") -> Callable:
    """``views -> mean over views of the logits`` (default, the official test.py's video
    score) or, with ``scores="softmax"``, of the views' softmax probabilities."""
    if scores not in SCORES:
        raise ValueError(f"scores must be 'softmax' or 'logits', got {scores!r}")

    def fn(views: torch.Tensor) -> torch.Tensor:
        logits = model(views).double()
        out = logits.softmax(dim=1) if scores == "softmax" else logits
        return out.mean(dim=0)

    return fn


def classification_metrics(
    scores: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> dict[str, Any]:
    """Top-1 / top-5 (top-k capped at the class count), mean class accuracy, per-class
    accuracy and confusion matrix of the evaluated videos' ``scores [n, C]``."""
    from cpd.eval.metrics import confusion_matrix, per_class_accuracy, topk_accuracy

    ks = sorted({1, min(5, num_classes)})
    acc = topk_accuracy(scores, labels, ks=ks)
    per_class = per_class_accuracy(scores, labels, num_classes)
    return {
        "top1": acc["top1"],
        "top5": acc[f"top{ks[-1]}"],
        "mean_class_accuracy": float(torch.nanmean(per_class)),
        "per_class_accuracy": per_class.tolist(),
        "confusion_matrix": confusion_matrix(scores, labels, num_classes).tolist(),
    }
