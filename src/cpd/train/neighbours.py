"""Batches of neighbours: groups of training pairs that are alike, so that what tells a batch's
pairs apart is the rest (often the motion) rather than everything at once. The metadata-free
counterparts of ``data.group_by``:

* ``data.video_neighbours=k``: groups of ``k`` videos that *look* alike: nearest neighbours by a
  still-appearance descriptor (the centre clip at 32 px, averaged over time, pooled to 8 x 8 x 3,
  centred over the dataset). Look-alike videos with different captions can only be told apart
  by what differs over time; on the synthetic set 67% of the pairs inside such groups share
  their appearance group (what ``group_by=group`` batches), against 10% for caption neighbours.
* ``data.caption_neighbours=k``: groups of ``k`` captions that are nearest neighbours in the
  frozen text encoder's pooled features (the same features the text-feature cache holds).

Either way the groups are greedy: a seed pair, drawn in an order from ``seed``, takes the
``k - 1`` unassigned pairs nearest to it (cosine similarity), the last groups smaller. They are
batched whole by :class:`~cpd.train.loader.GroupedSampler`, shuffled every epoch. They need
random access to the pairs: a manifest (with ``data.shards`` they are not used, a warning says
so, as for ``group_by``).

Cost: one pass over the videos (a 32 px centre clip each; from memory with the frame cache) or
one text-encoder pass over the captions, and ``N / k`` similarity rows of length ``N``
(``O(N^2 / k)``): seconds for 10k pairs; for corpora of millions, prefer random batches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from cpd.data.datasets import derive_seed
from cpd.errors import VideoDecodeError

__all__ = ["appearance_features", "caption_features", "neighbour_groups"]

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


@torch.no_grad()
def appearance_features(
    dataset: Any, *, size: int = 32, grid: int = 8, progress: bool = False
) -> torch.Tensor:
    """Unit still-appearance descriptors ``[N, 3 * grid * grid]`` of a dataset's videos (see
    the module docstring), loaded through ``dataset.loader`` (the frame cache when there is
    one). A video that cannot be decoded gets a zero descriptor: it groups with nothing in
    particular, and training's failure policy deals with it as with any bad video."""
    from tqdm import tqdm

    rows = []
    for path in tqdm(dataset.paths, desc="video neighbours", disable=not progress):
        try:
            clip = dataset.loader(path, num_frames=8, stride=4, crop_size=size, train=False)
        except VideoDecodeError:
            rows.append(torch.zeros(3 * grid * grid))
            continue
        rows.append(F.adaptive_avg_pool2d(clip.float().mean(dim=1), grid).flatten())
    feats = torch.stack(rows)
    # centred: what the videos share (the synthetic set's grey ground) says nothing
    return F.normalize(feats - feats.mean(dim=0, keepdim=True), dim=1)


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
