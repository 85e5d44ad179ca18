"""Video and caption embeddings of every sample of a set of shards, exact under torchrun.

Each rank streams its contiguous share of the shards (:mod:`cpd.data.stream`, evaluation
plan: every sample exactly once over all ranks and loader workers), embeds each video from
its test views (``num_clips x num_crops``, as :func:`cpd.video.load_clips` cuts them) and each
caption, and the rows are gathered by their global row, so several processes give the
single-process result. A sample that cannot be read or decoded is left out; the rows that are
missing after the gather are reported. :func:`shard_chunks` gives one rank's batches as they
are made, for a caller that writes them as they come (``cpd embed``, through
:func:`cpd.eval.embed.stream_embeddings`); :func:`embed_shards` gathers them all (retrieval).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cpd.data.datasets import collate
from cpd.data.shards import ShardIndex, shared_shard_index
from cpd.data.stream import ShardDataset
from cpd.eval.embed import EmbeddingChunk
from cpd.eval.gather import gather_embeddings
from cpd.eval.multiview import clip_overrides

__all__ = [
    "ShardEmbeddings",
    "describe_row",
    "embed_shards",
    "gather_shard_chunks",
    "shard_chunks",
]


@dataclass
class ShardEmbeddings:
    """Embeddings of the readable samples, in row order."""

    videos: torch.Tensor  # float64 [n, D]
    texts: torch.Tensor | None  # float64 [n, D] (None for a classifier)
    rows: torch.Tensor  # int64 [n], strictly increasing
    keys: list[str]
    missing: list[int]  # rows of the shards that could not be read or decoded
    total: int  # rows the shards hold


class _Views:
    """``load_clips`` behind the clip loader's call signature (train-time arguments ignored)."""

    def __init__(self, num_clips: int, num_crops: int, **extra: Any) -> None:
        self.num_clips, self.num_crops = num_clips, num_crops
        self.extra = extra  # target_fps / mean / std, when given

    def __call__(self, source: Any, *, num_frames: int, stride: int, crop_size: int,
                 **_: Any) -> torch.Tensor:  # fmt: skip
        from cpd.video import load_clips

        return load_clips(source, num_clips=self.num_clips, num_crops=self.num_crops,
                          num_frames=num_frames, stride=stride, crop_size=crop_size,
                          **self.extra)  # fmt: skip


def _gather_objects(items: list[Any], env: Any) -> list[Any]:
    """Every rank's ``items``, concatenated in rank order."""
    if env.world_size == 1:
        return items
    out: list[list[Any]] = [[] for _ in range(env.world_size)]
    torch.distributed.all_gather_object(out, items)
    return [x for part in out for x in part]


@torch.no_grad()
def embed_shards(
    model: Any,
    shards: str | Sequence[str],
    env: Any,
    *,
    video_fn: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    index_dirs: Sequence[str | Path] = (),
    texts: bool = True,
    **options: Any,
) -> ShardEmbeddings:
    """Embed every sample of ``shards``: ``video_fn(views [V, 3, T, S, S]) -> [dim]`` for the
    videos, ``model.encode_tokens`` (unit vectors) for the captions when ``texts``; ``options``
    are :func:`shard_chunks`'s. Every rank returns every row. Collective under a process group:
    call it on every rank."""
    index = shared_shard_index(shards, index_dirs)
    chunks = shard_chunks(model, index, env, video_fn=video_fn, dim=dim, texts=texts, **options)
    return gather_shard_chunks(chunks, index, env, dim=dim, texts=texts)


def gather_shard_chunks(
    chunks: Iterable[EmbeddingChunk], index: ShardIndex, env: Any, *, dim: int, texts: bool
) -> ShardEmbeddings:
    """Every rank's :func:`shard_chunks`, gathered in row order on every rank. Collective."""
    vids, txts, rows, keys = [], [], [], []
    for chunk in chunks:
        vids.append(chunk.values["videos"])
        if texts:
            txts.append(chunk.values["texts"])
        rows.append(chunk.rows)
        keys += chunk.ids or []
    local_v = torch.cat(vids) if vids else torch.zeros(0, dim, dtype=torch.float64)
    local_r = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
    device = env.device if env.world_size > 1 and env.device.type == "cuda" else "cpu"
    all_v, all_r = gather_embeddings(local_v.to(device), local_r.to(device))
    all_t = None
    if texts:
        local_t = torch.cat(txts) if txts else torch.zeros(0, dim, dtype=torch.float64)
        all_t = gather_embeddings(local_t.to(device), local_r.to(device))[0].cpu()
    by_row = dict(_gather_objects(list(zip(local_r.tolist(), keys, strict=True)), env))
    ordered = all_r.cpu()
    missing = sorted(set(range(index.total)) - set(ordered.tolist()))
    return ShardEmbeddings(all_v.cpu(), all_t, ordered, [by_row[r] for r in ordered.tolist()],
                           missing, index.total)  # fmt: skip


@torch.no_grad()
def shard_chunks(
    model: Any,
    index: ShardIndex,
    env: Any,
    *,
    video_fn: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    num_clips: int = 1,
    num_crops: int = 1,
    num_frames: int = 8,
    stride: int = 4,
    crop_size: int = 112,
    batch_size: int = 8,
    workers: int = 0,
    caption_key: str = "caption",
    texts: bool = True,
    fps: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Iterator[EmbeddingChunk]:
    """This rank's share of the samples of ``index``, a loader batch at a time: the rows, the
    keys as ids, float64 embeddings ``"videos"`` (``video_fn``) and, when ``texts``,
    ``"texts"``. ``fps`` / ``mean`` / ``std`` (None: :func:`cpd.video.load_clips`'s defaults)
    go to the clip loader. A sample that cannot be read or decoded never comes. Not
    collective."""
    from cpd.eval.common import progress

    extra = clip_overrides(fps, mean, std)
    tokenizer = model.textual_encoder.tokenizer if texts else _NoTokenizer()
    dataset = ShardDataset(index, tokenizer, train=False, num_frames=num_frames, stride=stride,
                           crop_size=crop_size, max_failure_ratio=1.0, caption_key=caption_key,
                           loader=_Views(num_clips, num_crops, **extra))  # fmt: skip
    dataset.configure(epoch=0, rank=env.rank, world_size=env.world_size, workers=workers,
                      batch_size=batch_size)  # fmt: skip
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate)  # fmt: skip
    share = (
        index.total * (env.rank + 1) // env.world_size - index.total * env.rank // env.world_size
    )
    bar = progress(loader, total=-(-share // batch_size), desc="shards", enabled=env.show_progress)
    for batch in bar:
        video = batch["video"].to(env.device, non_blocking=True)
        values = {"videos": torch.stack([video_fn(v).double().cpu() for v in video])}
        if texts:
            t = model.encode_tokens(batch["input_ids"].to(env.device),
                                    batch["attention_mask"].to(env.device))  # fmt: skip
            values["texts"] = F.normalize(t.double(), dim=1).cpu()
        yield EmbeddingChunk(batch["index"].to(torch.int64), values, ids=list(batch["key"]))


def describe_row(index: ShardIndex, row: int) -> str:
    """Where global row ``row`` of ``index`` comes from: ``"<shard url>, sample <n>"``."""
    shard = bisect.bisect_right(index.offsets, row) - 1
    return f"{index.urls[shard]}, sample {row - index.offsets[shard]}"


class _NoTokenizer:
    """Captions are not embedded (a classifier): give empty token rows."""

    is_fast = False

    def __call__(self, text: str, **kw: Any) -> dict[str, torch.Tensor]:
        n = kw["max_length"]
        return {"input_ids": torch.zeros(1, n, dtype=torch.long),
                "attention_mask": torch.zeros(1, n, dtype=torch.long)}  # fmt: skip
