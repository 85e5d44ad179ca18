"""Classification metrics: top-k accuracy, per-class accuracy, confusion matrix, multi-view
aggregation and mean ± std over splits.

Accuracies are fractions in [0, 1] (multiply by 100 for tables).

Ties. A sample's predicted class is ``scores.argmax(1)``, which on ties takes the lowest class
index. Top-k accuracy uses the same order: the true class's rank is 1 + (classes scoring
strictly higher) + (classes scoring equally with a lower index), so top-1 accuracy always
equals ``(argmax == label).mean()`` and agrees with :func:`confusion_matrix` and
:func:`per_class_accuracy`. ``ties="against"`` counts every tied class before the true one
instead (``rank = #{classes scoring >= the true class}``), as retrieval ranks do
(:mod:`cpd.eval.retrieval`): zero-shot classification, a retrieval of class texts, uses it, so
a collapsed model whose scores are all equal gets 0, not the share of the lowest class index.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

__all__ = [
    "aggregate_views",
    "class_ranks",
    "confusion_matrix",
    "mean_std",
    "per_class_accuracy",
    "topk_accuracy",
]


def _check_labels(labels: torch.Tensor, n: int, num_classes: int, name: str = "labels") -> None:
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with {n} entries, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
        raise ValueError(f"{name} hold {bad}, outside [0, {num_classes})")


def _check_scores(scores: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, C], got shape {tuple(scores.shape)}")
    if not scores.dtype.is_floating_point:
        raise TypeError(f"scores must be floating point, got {scores.dtype}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contain NaN or infinity")


_TIES = ("index", "against")


def class_ranks(scores: torch.Tensor, labels: torch.Tensor, ties: str = "index") -> torch.Tensor:
    """1-based rank of each sample's true class among its scores (ties: lower index first, or
    with ``ties="against"`` every tied class first)."""
    if ties not in _TIES:
        raise ValueError(f"ties must be one of {_TIES}, got {ties!r}")
    _check_scores(scores)
    n, c = scores.shape
    _check_labels(labels, n, c)
    true = scores.gather(1, labels.view(-1, 1))
    if ties == "against":
        return (scores >= true).sum(1)  # the true class is one of them
    higher = (scores > true).sum(1)
    lower_index = torch.arange(c, device=scores.device).view(1, -1) < labels.view(-1, 1)
    tied_before = ((scores == true) & lower_index).sum(1)
    return 1 + higher + tied_before


def topk_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5), ties: str = "index"
) -> dict[str, float]:
    """Top-k accuracies of ``scores [N, C]`` for ``labels [N]``: ``{"top1": ..., "top5": ...}``.

    A sample is correct at k when its true class ranks within the first k (``ties`` as in
    :func:`class_ranks` and the module docstring). Raises ``ValueError`` for k < 1, k > C, an empty batch, labels out of
    range or non-finite scores.
    """
    _check_scores(scores)
    n, c = scores.shape
    if n == 0:
        raise ValueError("topk_accuracy needs at least one sample")
    for k in ks:
        if not 1 <= int(k) <= c:
            raise ValueError(f"top-{k} accuracy is undefined with {c} classes (need 1 <= k <= C)")
    ranks = class_ranks(scores, labels, ties)
    return {f"top{int(k)}": float((ranks <= int(k)).double().mean()) for k in ks}


def _predictions(pred: torch.Tensor) -> torch.Tensor:
    if pred.dim() == 2:
        _check_scores(pred)
        return pred.argmax(1)
    return pred


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 ``[C, C]`` counts: row = true label, column = predicted class.

    ``pred`` is ``[N]`` predicted classes, or ``[N, C]`` scores (then ``argmax(1)``).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred = _predictions(pred)
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    _check_labels(labels, labels.shape[0], num_classes)
    _check_labels(pred, labels.shape[0], num_classes, name="predictions")
    flat = labels.long() * num_classes + pred.long()
    counts = torch.bincount(flat.cpu(), minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float64 ``[C]``: the fraction of each class's samples predicted correctly.

    ``pred`` as in :func:`confusion_matrix`. A class with no samples gets NaN (so
    ``torch.nanmean`` of the result is the mean class accuracy over the classes present).
    """
    cm = confusion_matrix(pred, labels, num_classes).double()
    support = cm.sum(1)
    acc = cm.diagonal() / support
    return torch.where(support > 0, acc, torch.full_like(acc, math.nan))


def aggregate_views(
    scores: torch.Tensor,
    video_index: torch.Tensor,
    *,
    views_per_video: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the scores of all views of each video: ``(video_scores [n, C], video_ids [n])``.

    ``scores [V, C]`` holds one row per view and ``video_index [V]`` the video each belongs to,
    in any order and spread over any batches or ranks. ``video_ids`` are the distinct videos in
    ascending order. The mean is computed in float64 over the views sorted into a canonical
    order (by video, then by the rows' values), so the result is bitwise the same for any
    permutation of the views; it is returned in ``scores.dtype``.

    ``views_per_video``: if given, every video must have exactly that many views, which
    catches views lost or duplicated on the way (e.g. a distributed sampler's padding);
    raises ``ValueError`` naming the first offending video.
    """
    _check_scores(scores)
    v, c = scores.shape
    if video_index.dim() != 1 or video_index.shape[0] != v:
        raise ValueError(
            f"video_index must be 1-D with {v} entries, got shape {tuple(video_index.shape)}"
        )
    if video_index.dtype.is_floating_point or video_index.dtype == torch.bool:
        raise TypeError(f"video_index must be an integer tensor, got {video_index.dtype}")
    if v == 0:
        raise ValueError("aggregate_views needs at least one view")
    # Rows [video, scores...] in float64 (exact for ids below 2**53). unique(dim=0) sorts them
    # lexicographically, so the summation order depends on the multiset of views only.
    rows = torch.cat([video_index.double().view(-1, 1), scores.double()], dim=1)
    unique_rows, counts = torch.unique(rows, dim=0, return_counts=True)
    video_ids, slot = torch.unique_consecutive(unique_rows[:, 0].long(), return_inverse=True)
    sums = torch.zeros(len(video_ids), c, dtype=torch.float64, device=scores.device)
    sums.index_add_(0, slot, unique_rows[:, 1:] * counts.double().view(-1, 1))
    num_views = torch.zeros(len(video_ids), dtype=torch.int64, device=scores.device)
    num_views.index_add_(0, slot, counts)
    if views_per_video is not None:
        wrong = (num_views != views_per_video).nonzero()
        if len(wrong):
            i = int(wrong[0])
            raise ValueError(
                f"video {int(video_ids[i])} has {int(num_views[i])} views, expected "
                f"{views_per_video} ({len(wrong)} videos differ)"
            )
    return (sums / num_views.double().view(-1, 1)).to(scores.dtype), video_ids.to(video_index.dtype)


def mean_std(values: Iterable[float], ddof: int = 1) -> tuple[float, float]:
    """``(mean, std)`` of ``values`` (e.g. one accuracy per split) for "mean ± std" tables.

    ``ddof=1`` (default) gives the sample standard deviation; with ``ddof`` or fewer values the
    std is NaN (undefined) rather than a misleading 0. Raises ``ValueError`` when empty or
    non-finite.
    """
    xs = [float(x) for x in values]
    if not xs:
        raise ValueError("mean_std needs at least one value")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"mean_std got a non-finite value: {xs}")
    mean = math.fsum(xs) / len(xs)
    if len(xs) <= ddof:
        return mean, math.nan
    var = math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - ddof)
    return mean, math.sqrt(var)
