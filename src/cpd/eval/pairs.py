"""A CPD model on labelled video-caption pairs: retrieval, zero-shot, and retrieved examples.

The videos of an action split (UCF101's list layout) that also have captions in a caption
manifest (matched by file) are embedded once, one view each; the same embeddings serve
text->video retrieval of the captions (:func:`cpd.eval.retrieval.retrieval_metrics`) and
zero-shot classification from the class names (:mod:`cpd.eval.zeroshot`, the prompt templates
of ``cpd zeroshot``). Videos that fail to decode are left out with their captions, and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cpd.data import ActionSplit, CaptionRecord
from cpd.errors import CheckpointError, DataError

__all__ = ["PairsEvaluation", "evaluate_pairs", "pick_queries", "top_videos"]


@dataclass
class PairsEvaluation:
    """What :func:`evaluate_pairs` measured, over the videos that decoded.

    ``video_emb [N, D]`` and ``text_emb [M, D]`` are unit embeddings; ``text_to_video [M]`` the
    row of each caption's video; ``records`` / ``captions`` the videos and captions kept.
    """

    retrieval: dict[str, float]
    zeroshot: dict[str, Any]  # zeroshot_metrics + confusion_matrix
    classes: tuple[str, ...]
    records: list[Any]
    captions: list[CaptionRecord]
    video_emb: torch.Tensor
    text_emb: torch.Tensor
    text_to_video: torch.Tensor
    labels: torch.Tensor
    failed: dict[int, tuple[str, str]]


def _key(path: str) -> str:
    return str(Path(path).resolve())


@torch.inference_mode()
def evaluate_pairs(
    model_path: str | Path,
    split: ActionSplit,
    captions: list[CaptionRecord],
    *,
    num_frames: int,
    stride: int,
    crop_size: int,
    workers: int = 0,
    device: str = "cpu",
) -> PairsEvaluation:
    """Embed ``split``'s videos (one centre clip each) and ``captions``; measure retrieval and
    zero-shot. Every caption must belong to a video of ``split`` (:class:`DataError` if not)."""
    from cpd.eval.common import close_distributed, init_distributed
    from cpd.eval.embed import embed_texts
    from cpd.eval.metrics import confusion_matrix
    from cpd.eval.multiview import collect_video_outputs, multiview_dataset
    from cpd.eval.retrieval import retrieval_metrics
    from cpd.eval.zeroshot import class_text_embeddings, video_embedding_fn, zeroshot_metrics
    from cpd.models import CPDModel, load_model

    position = {_key(r.path): i for i, r in enumerate(split.records)}
    missing = [c.video_id for c in captions if _key(c.path) not in position]
    if missing or not captions:
        raise DataError(f"captions without a video in the split: {missing[:5] or 'no captions'}")
    env = init_distributed(device)
    try:
        model = load_model(model_path, env.device)
        if not isinstance(model, CPDModel):
            raise CheckpointError(f"{model_path}: not a CPD model with a text tower")
        dataset = multiview_dataset(split.records, num_clips=1, num_crops=1,
                                    num_frames=num_frames, stride=stride, crop_size=crop_size)  # fmt: skip
        out = collect_video_outputs(dataset, video_embedding_fn(model), env, dim=model.embed_dim,
                                    workers=workers, desc="val videos")  # fmt: skip
        text_emb = embed_texts(model, [c.caption for c in captions], env)
        class_emb = class_text_embeddings(model.encode_text, split.classes).cpu()
    finally:
        close_distributed(env)
    ok = out.ok
    if not bool(ok.any()):
        raise DataError("no video could be decoded")
    new_row = torch.cumsum(ok.long(), 0) - 1  # row of each video once the failed are dropped
    t2v = torch.tensor([position[_key(c.path)] for c in captions])
    keep = ok[t2v]
    video_emb = out.values[ok]
    labels = torch.tensor([r.label for r in split.records])[ok]
    text_to_video = new_row[t2v[keep]]
    retrieval = retrieval_metrics(video_emb, text_emb[keep], text_to_video=text_to_video)
    zeroshot: dict[str, Any] = zeroshot_metrics(video_emb, labels, class_emb)
    scores = video_emb @ class_emb.T
    zeroshot["confusion_matrix"] = confusion_matrix(scores, labels, split.num_classes).tolist()
    return PairsEvaluation(
        retrieval, zeroshot, split.classes,
        [r for r, good in zip(split.records, ok.tolist(), strict=True) if good],
        [c for c, good in zip(captions, keep.tolist(), strict=True) if good],
        video_emb, text_emb[keep], text_to_video, labels, out.failed,
    )  # fmt: skip


def pick_queries(labels: list[int], count: int, seed: int) -> list[int]:
    """``count`` indices into ``labels`` with distinct labels, in a random order drawn from
    ``seed`` alone (fewer when there are fewer distinct labels)."""
    order = np.random.default_rng([seed, 9]).permutation(len(labels))
    chosen: list[int] = []
    seen: set[int] = set()
    for i in order.tolist():
        if labels[i] not in seen:
            chosen.append(i)
            seen.add(labels[i])
        if len(chosen) == count:
            break
    return chosen


def top_videos(ev: PairsEvaluation, query: int, k: int) -> tuple[list[int], int]:
    """The ``k`` best video rows for caption ``query`` and the 1-based rank of its own video
    (ties against it, as :mod:`cpd.eval.retrieval` ranks: 1 + other videos scoring >= it)."""
    sims = ev.video_emb @ ev.text_emb[query]
    own = int(ev.text_to_video[query])
    rank = int((sims >= sims[own]).sum())  # its own video is one of them
    # a stable sort, so that equal scores keep gallery order
    order = torch.sort(sims, descending=True, stable=True).indices[:k].tolist()
    return order, rank
