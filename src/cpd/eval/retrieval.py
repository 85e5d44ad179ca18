"""Text-video retrieval metrics: recall@k, median and mean rank, in both directions.

Similarity is the dot product of the embeddings (the cosine for L2-normalised ones, which is
what the model's heads output).

Ranks are 1-based and ties count *against* the query (a pessimistic rank): every other
gallery item scoring at least as high as the true one goes before it,
``rank = 1 + #{other items with s >= s_true}``. A model that maps every video (or every
caption) to one vector therefore ranks each true item last, recall@1 = 0 (recall@k = 0 for
k < N), instead of the 100% that counting only strictly higher scores would give it. The
rank does not depend on how the gallery was ordered or sharded, and it is an integer; with
continuous embeddings of a working model exact ties do not occur and nothing changes (an
average over the tied positions would give chance level for a collapsed model, but fractional
ranks and recalls that no longer read as "the query's item was in the top k"). The true score
is read from the same similarity row as its competitors, so an item is never counted as
beating itself through rounding.

Several captions per video (``text_to_video[j]`` = the video of caption ``j``):

* text -> video: each caption is a query; its target is its own video.
* video -> text: each video that has at least one caption is a query; its rank is that of
  its *best-ranked* caption, i.e. 1 + #(captions of other videos scoring at least as high as
  its best caption; its own other captions do not count). This is the usual MSR-VTT / MSVD
  convention, with ties against the query. Videos without a caption
  (extra gallery distractors) are not video -> text queries.

Memory. Similarities are computed for ``chunk_size`` query rows at a time against the whole
gallery, so peak extra memory is about ``4 * chunk_size * max(N, M)`` bytes; the ``N x M``
matrix is never built. For a gallery of a million items pick ``chunk_size`` ~ 256 (1 GB).
Results are deterministic for given inputs and ``chunk_size`` (a different chunking may change
float rounding, hence near-exact ties, in the last bit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = ["RetrievalRanks", "retrieval_metrics", "retrieval_ranks"]


class RetrievalRanks(NamedTuple):
    """Per-query 1-based ranks of :func:`retrieval_ranks`."""

    t2v: torch.Tensor  # int64 [M]: rank of caption j's video among all videos
    v2t: torch.Tensor  # int64 [Q]: rank of the best caption of video v2t_videos[q]
    v2t_videos: torch.Tensor  # int64 [Q]: the videos that have a caption, ascending
    captions_per_video: torch.Tensor  # int64 [Q]: how many captions each of those videos has


def _check(
    video_emb: torch.Tensor, text_emb: torch.Tensor, text_to_video: torch.Tensor | None
) -> torch.Tensor:
    if video_emb.dim() != 2 or text_emb.dim() != 2:
        raise ValueError(
            f"embeddings must be 2-D, got video {tuple(video_emb.shape)} "
            f"and text {tuple(text_emb.shape)}"
        )
    (n, d), (m, d_text) = video_emb.shape, text_emb.shape
    if d != d_text:
        raise ValueError(f"video embeddings have dim {d}, text embeddings {d_text}")
    if n == 0 or m == 0:
        raise ValueError(f"retrieval needs at least one video and one text, got {n} and {m}")
    for name, emb in (("video", video_emb), ("text", text_emb)):
        if not emb.dtype.is_floating_point:
            raise TypeError(f"{name} embeddings must be floating point, got {emb.dtype}")
        if not bool(torch.isfinite(emb).all()):
            raise ValueError(f"{name} embeddings contain NaN or infinity")
    if text_to_video is None:
        if m != n:
            raise ValueError(
                f"{m} texts for {n} videos: pass text_to_video when captions and videos "
                "are not paired row by row"
            )
        return torch.arange(n, device=video_emb.device)
    if text_to_video.shape != (m,):
        raise ValueError(f"text_to_video must have shape ({m},), got {tuple(text_to_video.shape)}")
    if text_to_video.dtype.is_floating_point or text_to_video.dtype == torch.bool:
        raise TypeError(f"text_to_video must be an integer tensor, got {text_to_video.dtype}")
    if int(text_to_video.min()) < 0 or int(text_to_video.max()) >= n:
        raise ValueError(f"text_to_video points outside the {n} videos")
    return text_to_video.to(device=video_emb.device, dtype=torch.int64)


@torch.no_grad()
def retrieval_ranks(
    video_emb: torch.Tensor,
    text_emb: torch.Tensor,
    *,
    text_to_video: torch.Tensor | None = None,
    chunk_size: int = 4096,
) -> RetrievalRanks:
    """Per-query ranks for ``video_emb [N, D]`` and ``text_emb [M, D]``; see the module docs."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    t2v_index = _check(video_emb, text_emb, text_to_video)
    dtype = torch.promote_types(torch.promote_types(video_emb.dtype, text_emb.dtype), torch.float32)
    video = video_emb.detach().to(dtype)
    text = text_emb.detach().to(dtype)
    n, m = video.shape[0], text.shape[0]

    t2v = torch.empty(m, dtype=torch.int64, device=video.device)
    for j0 in range(0, m, chunk_size):
        sims = text[j0 : j0 + chunk_size] @ video.T  # [c, N]
        true = sims.gather(1, t2v_index[j0 : j0 + chunk_size].view(-1, 1))
        # the true item itself is one of the >= (same row, same value): 1 + the others
        t2v[j0 : j0 + chunk_size] = (sims >= true).sum(1)

    # captions grouped by video, so a chunk of videos finds its captions by two searches
    order = torch.argsort(t2v_index, stable=True)
    sorted_video = t2v_index[order]
    counts = torch.bincount(t2v_index, minlength=n)
    v2t_parts = []
    for i0 in range(0, n, chunk_size):
        i1 = min(i0 + chunk_size, n)
        sims = video[i0:i1] @ text.T  # [c, M]
        lo, hi = torch.searchsorted(sorted_video, torch.tensor([i0, i1], device=video.device))
        cols = order[int(lo) : int(hi)]
        rows = t2v_index[cols] - i0
        own = sims[rows, cols]
        best = torch.full((i1 - i0,), -math.inf, dtype=dtype, device=video.device)
        best.scatter_reduce_(0, rows, own, reduce="amax")
        # captions scoring >= the best one, minus the video's own (those tie with it at most)
        own_tied = torch.zeros(i1 - i0, dtype=torch.int64, device=video.device)
        own_tied.index_add_(0, rows, (own >= best[rows]).long())
        ranks = 1 + (sims >= best.view(-1, 1)).sum(1) - own_tied
        v2t_parts.append(ranks[counts[i0:i1] > 0])
    videos = (counts > 0).nonzero().view(-1)
    return RetrievalRanks(t2v, torch.cat(v2t_parts), videos, counts[videos])


def _median(ranks: torch.Tensor) -> float:
    # the mean of the two middle values for an even count, like numpy.median
    s = ranks.sort().values
    n = s.numel()
    return (float(s[(n - 1) // 2]) + float(s[n // 2])) / 2


def _v2t_chance(captions_per_video: torch.Tensor, num_texts: int, k: int) -> float:
    """Expected recall@k of a random ranking when a video has c of the M captions:
    1 - P(none of its c captions among the first k) = 1 - prod_t (M - c - t) / (M - t)."""
    values, counts = torch.unique(captions_per_video, return_counts=True)
    total = 0.0
    for c, count in zip(values.tolist(), counts.tolist(), strict=True):
        miss = 1.0
        for t in range(min(k, num_texts)):
            miss *= max(num_texts - c - t, 0) / (num_texts - t)
        total += (1.0 - miss) * count
    return total / int(captions_per_video.numel())


def retrieval_metrics(
    video_emb: torch.Tensor,
    text_emb: torch.Tensor,
    *,
    text_to_video: torch.Tensor | None = None,
    chunk_size: int = 4096,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@k, median and mean rank for text -> video and video -> text retrieval.

    Args:
        video_emb: ``[N, D]`` video embeddings (the gallery for text queries).
        text_emb: ``[M, D]`` caption embeddings.
        text_to_video: ``[M]`` the video of each caption; default ``arange(N)`` (needs M == N).
        chunk_size: query rows per similarity block (memory, see the module docstring).
        ks: the recall cut-offs.

    Returns:
        ``{"t2v_r1", "t2v_r5", "t2v_r10", "t2v_median_rank", "t2v_mean_rank",
        "t2v_num_queries", "t2v_chance_r1", ...}`` and the same with ``v2t_``, plus
        ``num_videos`` and ``num_texts`` (counts are ints). Recalls and chance levels are fractions in [0, 1];
        ranks are 1-based. Chance is a random ranking's expected recall: ``min(k, N) / N`` for
        text -> video, and for video -> text the probability that one of a video's captions
        lands in the first k of M (``k / M`` with one caption per video).
    """
    for k in ks:
        if k < 1:
            raise ValueError(f"recall@{k} is undefined (need k >= 1)")
    r = retrieval_ranks(video_emb, text_emb, text_to_video=text_to_video, chunk_size=chunk_size)
    n, m = video_emb.shape[0], text_emb.shape[0]
    out: dict[str, float] = {"num_videos": n, "num_texts": m}
    for name, ranks in (("t2v", r.t2v), ("v2t", r.v2t)):
        for k in ks:
            out[f"{name}_r{k}"] = float((ranks <= k).double().mean())
        out[f"{name}_median_rank"] = _median(ranks)
        out[f"{name}_mean_rank"] = float(ranks.double().mean())
        out[f"{name}_num_queries"] = int(ranks.numel())
    for k in ks:
        out[f"t2v_chance_r{k}"] = min(k, n) / n
        out[f"v2t_chance_r{k}"] = _v2t_chance(r.captions_per_video, m, k)
    return out
