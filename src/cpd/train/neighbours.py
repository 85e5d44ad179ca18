"""Batches of caption neighbours: groups of pairs whose captions are close in the frozen text
encoder's feature space, so that what tells a batch's pairs apart is what their captions say
differently (often the motion) rather than everything at once.

``data.caption_neighbours=k`` groups the training pairs into groups of ``k`` (the last ones
smaller) before training: a seed caption, drawn in an order from ``seed``, takes the ``k - 1``
unassigned captions nearest to it (cosine similarity of the pooled features of the frozen text
encoder, the same features the text-feature cache holds). The groups are then batched whole by
:class:`~cpd.train.loader.GroupedSampler`, shuffled every epoch. It needs nothing but the
captions: no metadata column, unlike ``data.group_by``.

Cost: one text-encoder pass over the captions and ``N / k`` similarity rows of length ``N``
(``O(N² / k)``): seconds for 10k pairs; for corpora of millions, prefer shards and random
batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cpd.data.datasets import derive_seed

__all__ = ["caption_features", "neighbour_groups"]

_GROUP_STREAM = 31


@torch.no_grad()
def caption_features(
    text_encoder: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    chunk: int = 256,
) -> torch.Tensor:
    """Unit pooled features ``[N, H]`` (float32, CPU) of tokenised captions, in eval mode."""
    was_training = text_encoder.training
    text_encoder.eval()
    device = next(text_encoder.parameters()).device
    parts = []
    for start in range(0, len(input_ids), chunk):
        ids = input_ids[start : start + chunk].long().to(device)
        mask = attention_mask[start : start + chunk].long().to(device)
        parts.append(text_encoder.encode_tokens(ids, mask).float().cpu())
    text_encoder.train(was_training)
    return F.normalize(torch.cat(parts), dim=1)


def neighbour_groups(features: torch.Tensor, size: int, seed: int) -> list[int]:
    """A group id per row: greedy groups of ``size`` mutual neighbours (see the module
    docstring). Every row is in exactly one group; the order of seeds comes from ``seed``."""
    n = len(features)
    if size < 2:
        return list(range(n))
    g = torch.Generator().manual_seed(derive_seed(seed, 0, 0, _GROUP_STREAM))
    order = torch.randperm(n, generator=g).tolist()
    free = torch.ones(n, dtype=torch.bool)
    group = [-1] * n
    next_id = 0
    for i in order:
        if not free[i]:
            continue
        sims = features @ features[i]
        sims[~free] = float("-inf")
        take = torch.topk(sims, min(size, int(free.sum()))).indices
        for j in take.tolist():
            group[j] = next_id
            free[j] = False
        next_id += 1
    return group
