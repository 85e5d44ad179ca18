"""Collect per-rank evaluation outputs into one exact, ordered set.

``DistributedSampler`` shards a dataset by striding and pads the last shard by repeating
samples from the start, so that every rank runs the same number of steps. Evaluating on the
concatenation of all ranks' outputs would count those repeats twice and depend on the number
of processes. :func:`gather_embeddings` removes both effects: it gathers every row with its
dataset index, keeps one row per index and sorts by index, so validation computed from its
result is the same under any number of processes as in one.
"""

from __future__ import annotations

from typing import Any

import torch

from cpd.dist import all_gather_no_grad

__all__ = ["gather_embeddings"]


@torch.no_grad()
def gather_embeddings(
    emb: torch.Tensor,
    index: torch.Tensor,
    *,
    num_samples: int | None = None,
    group: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather ``emb [b, ...]`` and their dataset indices ``index [b]``; dedupe; sort.

    Rows are concatenated in rank order; of rows sharing an index the first one (lowest rank,
    then earliest local position) is kept; the result is sorted by index. Without a process
    group this just dedupes and sorts. ``emb`` may be any ``[b, ...]`` tensor (embeddings,
    class scores, several views); ``b`` may differ between ranks, zero included. Every rank
    receives the same result.

    Args:
        emb: local rows, ``[b, ...]``.
        index: int ``[b]``, the dataset index of each row.
        num_samples: if given, the gathered indices must be exactly ``0 .. num_samples - 1``
            (raises ``ValueError`` naming what is missing or out of range), which catches a
            sampler or loop that dropped samples.
        group: process group; the default group if None.

    Returns:
        ``(emb_all [N, ...], index_all [N])`` with ``index_all`` strictly increasing.
    """
    if index.dim() != 1 or index.shape[0] != emb.shape[0]:
        raise ValueError(
            f"index must be 1-D with one entry per row of emb ({emb.shape[0]}), "
            f"got shape {tuple(index.shape)}"
        )
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise TypeError(f"index must be an integer tensor, got {index.dtype}")
    # gather on emb's device: NCCL needs CUDA tensors, gloo CPU ones
    emb_all = all_gather_no_grad(emb, group)
    index_all = all_gather_no_grad(index.to(device=emb.device, dtype=torch.int64), group)
    # a stable sort keeps gathered (rank) order among equal indices: the first one survives
    index_sorted, order = torch.sort(index_all, stable=True)
    first = torch.ones_like(index_sorted, dtype=torch.bool)
    first[1:] = index_sorted[1:] != index_sorted[:-1]
    keep = order[first]
    emb_all, index_all = emb_all[keep], index_sorted[first]
    if num_samples is not None:
        _check_complete(index_all, num_samples)
    return emb_all, index_all


def _check_complete(index: torch.Tensor, num_samples: int) -> None:
    if index.numel() and (int(index[0]) < 0 or int(index[-1]) >= num_samples):
        raise ValueError(
            f"gathered indices span {int(index[0])}..{int(index[-1])}, outside 0..{num_samples - 1}"
        )
    if index.numel() != num_samples:
        present = torch.zeros(num_samples, dtype=torch.bool, device=index.device)
        present[index] = True
        missing = (~present).nonzero().view(-1)
        raise ValueError(
            f"gathered {index.numel()} of {num_samples} samples; missing "
            f"{missing[:10].tolist()}{' ...' if len(missing) > 10 else ''}"
        )
