"""Zero-shot action recognition: classify videos by the text embeddings of their class names.

Class text. A class name becomes words: CamelCase and digit boundaries and underscores /
hyphens split it, then it is lower-cased ("ApplyEyeMakeup" -> "apply eye makeup",
"brush_hair" -> "brush hair", "YoYo" -> "yo yo"). Each class is embedded through every prompt
template ("a video of a person {}.", ...); the L2-normalised embeddings of a class's prompts
are averaged and the mean renormalised (prompt ensembling, as CLIP does).

Video embedding. The model's L2-normalised embeddings of a video's views (``num_clips x
num_crops``) are averaged and renormalised; the score of a class is the cosine of the two.

Protocols. "all": every class is a candidate. "random splits": ``n`` random halves of the
classes (the held-out half, ``C // 2`` classes, drawn from a seed recorded with the results);
the videos of the held-out classes are classified among those classes only, as in zero-shot
transfer where the other half would have been seen in training. Chance is ``k / candidates``.

Ties count against the video: the true class's rank is the number of candidate classes scoring
at least as high (:func:`cpd.eval.metrics.class_ranks` with ``ties="against"``, as retrieval
ranks), so a collapsed model (every score equal) gets top-1 0, not the share of the videos of
the lowest class index.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cpd.errors import DataError

__all__ = [
    "DEFAULT_TEMPLATES",
    "class_name_to_text",
    "class_text_embeddings",
    "random_class_splits",
    "read_templates",
    "video_embedding_fn",
    "zeroshot_metrics",
]

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a video of a person {}.",
    "a video of {}.",
    "{}",
    "a person {}.",
    "a clip of someone {}.",
    "a video of a person doing {}.",
    "a photo of a person {}.",
    "an example of {}.",
)

# boundaries: aB (lower->Upper), ABc (acronym end), letter<->digit
_CAMEL = re.compile(
    r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])"
)


def class_name_to_text(name: str) -> str:
    """``"ApplyEyeMakeup"`` -> ``"apply eye makeup"``, ``"brush_hair"`` -> ``"brush hair"``."""
    words = re.split(r"[\s_\-]+", _CAMEL.sub(" ", name.strip()))
    return " ".join(w.lower() for w in words if w)


def read_templates(path: str | Path) -> list[str]:
    """Prompt templates, one per non-blank line, each with one ``{}`` for the class text."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read templates: {exc}") from exc
    templates = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.count("{}") != 1:
            raise DataError(f"{path} line {number}: a template needs exactly one '{{}}': {line!r}")
        templates.append(line.strip())
    if not templates:
        raise DataError(f"{path}: no templates")
    return templates


@torch.no_grad()
def class_text_embeddings(
    encode_text: Callable[[list[str]], torch.Tensor],
    classes: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    batch_size: int = 256,
) -> torch.Tensor:
    """``[C, D]`` unit class embeddings: per class, the renormalised mean of its prompts'
    normalised embeddings. ``encode_text`` maps a list of strings to ``[n, D]``
    (``CPDModel.encode_text``)."""
    if not classes or not templates:
        raise ValueError("class_text_embeddings needs at least one class and one template")
    prompts = [t.format(class_name_to_text(c)) for c in classes for t in templates]
    parts = [encode_text(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
    emb = F.normalize(torch.cat(parts).double(), dim=1).view(len(classes), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=1)


def video_embedding_fn(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``views [V, 3, T, S, S] -> [D]``: the renormalised mean of the views' unit embeddings."""

    def fn(views: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(model.encode_video(views).double(), dim=1)
        return F.normalize(emb.mean(dim=0), dim=0)

    return fn


def random_class_splits(num_classes: int, num_splits: int, seed: int) -> list[list[int]]:
    """``num_splits`` held-out halves (``num_classes // 2`` sorted class indices each).

    Split ``i`` comes from a generator seeded with ``(seed, i)`` alone, so a split does not
    depend on how many are drawn.
    """
    if num_classes < 2:
        raise ValueError(f"random class splits need at least 2 classes, got {num_classes}")
    out = []
    for i in range(num_splits):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, i])))
        out.append(sorted(rng.permutation(num_classes)[: num_classes // 2].tolist()))
    return out


def zeroshot_metrics(
    video_emb: torch.Tensor,
    labels: torch.Tensor,
    class_emb: torch.Tensor,
    candidates: Sequence[int] | None = None,
) -> dict[str, float]:
    """Top-1 / top-5 and their chance levels, classifying among ``candidates`` (default all).

    Only the videos whose label is a candidate are classified; labels are remapped to the
    candidates' order. Ties count against the video (see the module docstring).
    """
    from cpd.eval.metrics import topk_accuracy

    cand = torch.arange(class_emb.shape[0]) if candidates is None else torch.tensor(candidates)
    remap = torch.full((class_emb.shape[0],), -1, dtype=torch.int64)
    remap[cand] = torch.arange(len(cand))
    keep = remap[labels] >= 0
    if not bool(keep.any()):
        raise DataError("no video belongs to the candidate classes")
    scores = video_emb[keep].double() @ class_emb[cand].double().T
    k5 = min(5, len(cand))
    acc = topk_accuracy(scores, remap[labels[keep]], ks=sorted({1, k5}), ties="against")
    return {
        "top1": acc["top1"],
        "top5": acc[f"top{k5}"],
        "chance_top1": 1 / len(cand),
        "chance_top5": k5 / len(cand),
        "num_videos": int(keep.sum()),
        "num_classes": len(cand),
    }
