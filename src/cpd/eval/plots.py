"""Figures of evaluation results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "RetrievedVideo",
    "plot_confusion_matrix",
    "plot_loss_curve",
    "plot_recall_curve",
    "plot_retrieval_examples",
]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    _pyplot().close(fig)
    return out


def plot_confusion_matrix(
    matrix: torch.Tensor | Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str | Path,
    *,
    title: str = "confusion matrix",
) -> Path:
    """Save a row-normalised confusion matrix (rows = true class) as a PNG at ``path``.

    Cells show the fraction of each true class predicted as each class, so classes of
    different sizes read alike; class names label the axes up to 40 classes (ticks only
    beyond, where names would overlap: UCF101 has 101).
    """
    plt = _pyplot()
    counts = torch.as_tensor(matrix, dtype=torch.float64)
    c = counts.shape[0]
    if counts.shape != (c, c) or len(classes) != c:
        raise ValueError(f"matrix {tuple(counts.shape)} does not fit {len(classes)} classes")
    support = counts.sum(1, keepdim=True).clamp_min(1)
    rates = (counts / support).numpy()
    size = min(4 + 0.18 * c, 24)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if c <= 40:
        ax.set_xticks(range(c), labels=list(classes), rotation=90, fontsize=7)
        ax.set_yticks(range(c), labels=list(classes), fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_loss_curve(
    steps: Sequence[dict[str, Any]], epochs: Sequence[dict[str, Any]], path: str | Path
) -> Path:
    """Training loss against the optimizer step: the logged steps' losses and each epoch's
    mean (records of ``metrics.jsonl``, kinds "step" and "epoch")."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    pts = [(r["global_step"], r["loss"]) for r in steps if isinstance(r.get("loss"), float)]
    if pts:
        ax.plot(*zip(*pts, strict=True), lw=1, alpha=0.6, label="logged steps")
    ends = [(r["global_step"], r["loss"]) for r in epochs if isinstance(r.get("loss"), float)]
    if ends:
        ax.plot(*zip(*ends, strict=True), "o-", ms=3, label="epoch mean")
    if not pts and not ends:
        ax.text(0.5, 0.5, "no losses logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("pretraining loss")
    ax.grid(alpha=0.3)
    if pts or ends:
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_recall_curve(
    vals: Sequence[dict[str, Any]], path: str | Path, ks: Sequence[int] = (1, 5, 10)
) -> Path:
    """Validation text->video recall@k (%) against the epoch, each with its chance level as a
    dashed line of the same colour (records of ``metrics.jsonl``, kind "val")."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for k in ks:
        pts = [(r["epoch"], 100 * r[f"t2v_r{k}"]) for r in vals if f"t2v_r{k}" in r]
        if not pts:
            continue
        (line,) = ax.plot(*zip(*pts, strict=True), "o-", ms=4, label=f"R@{k}")
        chance = vals[-1].get(f"t2v_chance_r{k}")
        if isinstance(chance, float):
            ax.axhline(100 * chance, ls="--", lw=1, color=line.get_color(),
                       label=f"R@{k} chance")  # fmt: skip
    if not vals:
        ax.text(0.5, 0.5, "no validation during pretraining", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip
    else:
        ax.legend(fontsize=8, ncol=2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("text->video recall (%)")
    ax.set_ylim(0, 100)
    ax.set_title("validation retrieval during pretraining")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


@dataclass(frozen=True)
class RetrievedVideo:
    """One retrieved video of a query: ``frames [T, H, W, 3]`` in [0, 1], a label to show,
    and whether it is the query's own video."""

    frames: np.ndarray
    label: str
    correct: bool


def plot_retrieval_examples(
    queries: Sequence[tuple[str, Sequence[RetrievedVideo]]], path: str | Path
) -> Path:
    """For each ``(query text, retrieved videos best first)``, one row of frames per video;
    the query's own video is framed in green, others in red."""
    plt = _pyplot()
    if not queries or not all(videos for _, videos in queries):
        raise ValueError("plot_retrieval_examples needs queries with retrieved videos")
    cols = max(v.frames.shape[0] for _, videos in queries for v in videos)
    width, label_width = 1.3 * cols + 2.0, 2.0  # inches; labels of class names on the left
    fig = plt.figure(figsize=(width, sum(1.3 * len(v) + 0.45 for _, v in queries)))
    ratios = [len(videos) + 0.35 for _, videos in queries]
    subfigs = np.atleast_1d(fig.subfigures(len(queries), 1, height_ratios=ratios))
    for sub, (text, videos) in zip(subfigs, queries, strict=True):
        sub.suptitle(text, fontsize=8, x=0.01, ha="left")
        axes = sub.subplots(len(videos), cols, squeeze=False)
        sub.subplots_adjust(left=label_width / width, right=0.99, top=0.86, bottom=0.02,
                            wspace=0.05, hspace=0.08)  # fmt: skip
        for rank, (row, video) in enumerate(zip(axes, videos, strict=True), start=1):
            colour = "tab:green" if video.correct else "tab:red"
            for j, ax in enumerate(row):
                ax.set_xticks([])
                ax.set_yticks([])
                if j < video.frames.shape[0]:
                    ax.imshow(np.clip(video.frames[j], 0.0, 1.0))
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(2.5)
            row[0].set_ylabel(f"#{rank} {video.label}", fontsize=7, rotation=0, ha="right",
                              va="center", color=colour)  # fmt: skip
    return _save(fig, path)
