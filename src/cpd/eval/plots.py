"""Figures of evaluation results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["plot_confusion_matrix"]


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
