"""Evaluation under two gloo processes equals evaluation in one process, exactly.

A ``DistributedSampler`` over 11 samples gives each of 2 ranks 6 indices (one repeated as
padding), consumed in uneven batches. Each sample's outputs are a deterministic function of its
index, so every process can compute the single-process reference itself.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from cpd import dist
from cpd.eval.gather import gather_embeddings
from cpd.eval.metrics import aggregate_views, topk_accuracy
from cpd.eval.retrieval import retrieval_metrics

WORLD, N, D, VIEWS, C = 2, 11, 8, 3, 5


def _outputs(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(video, text) embeddings of samples ``index``: seeded by the index alone."""
    rows = [torch.randn(2, D, generator=torch.Generator().manual_seed(int(i))) for i in index]
    both = torch.nn.functional.normalize(torch.stack(rows), dim=2)
    return both[:, 0], both[:, 1]


def _view_scores(view_index: torch.Tensor) -> torch.Tensor:
    g = [torch.Generator().manual_seed(1000 + int(i)) for i in view_index]
    return torch.stack([torch.randn(C, generator=gi) for gi in g])


def _batches(indices: list[int], sizes: list[int]) -> list[torch.Tensor]:
    out, start = [], 0
    for size in sizes:
        out.append(torch.tensor(indices[start : start + size], dtype=torch.long))
        start += size
    return out


def _check_embeddings(rank: int) -> None:
    sampler = DistributedSampler(range(N), num_replicas=WORLD, rank=rank, shuffle=True, seed=3)
    local = list(sampler)
    assert len(local) == 6  # 11 samples -> 12 slots: one sample appears on both ranks
    video, text, idx = [], [], []
    for batch in _batches(local, [4, 2]):
        v, t = _outputs(batch)
        video.append(v)
        text.append(t)
        idx.append(batch)
    local_idx = torch.cat(idx)
    video_all, index_all = gather_embeddings(torch.cat(video), local_idx, num_samples=N)
    text_all, index_t = gather_embeddings(torch.cat(text), local_idx, num_samples=N)
    ref_video, ref_text = _outputs(torch.arange(N))
    assert torch.equal(index_all, torch.arange(N)) and torch.equal(index_t, index_all)
    assert torch.equal(video_all, ref_video) and torch.equal(text_all, ref_text)
    assert retrieval_metrics(video_all, text_all) == retrieval_metrics(ref_video, ref_text)

    # a rank with nothing to contribute still takes part in the gather; all get rank 0's rows
    rank0 = torch.tensor(list(DistributedSampler(range(N), WORLD, 0, shuffle=True, seed=3)))
    mine = rank0 if rank == 0 else rank0[:0]
    got, got_idx = gather_embeddings(_outputs(mine)[0] if rank == 0 else ref_video[:0], mine)
    assert torch.equal(got_idx, torch.unique(rank0)) and torch.equal(got, ref_video[got_idx])


def _check_views(rank: int) -> None:
    # views of one video land on different ranks (a view-level sampler), padding included
    num_views = N * VIEWS
    sampler = DistributedSampler(range(num_views), num_replicas=WORLD, rank=rank, shuffle=False)
    local = torch.tensor(list(sampler))
    scores, view_index = gather_embeddings(_view_scores(local), local, num_samples=num_views)
    video_scores, video_ids = aggregate_views(scores, view_index // VIEWS, views_per_video=VIEWS)
    ref_all = torch.arange(num_views)
    ref_scores, ref_ids = aggregate_views(_view_scores(ref_all), ref_all // VIEWS)
    assert torch.equal(video_scores, ref_scores) and torch.equal(video_ids, ref_ids)
    labels = torch.arange(N) % C
    assert topk_accuracy(video_scores, labels) == topk_accuracy(ref_scores, labels)


def _worker(rank: int, port: int) -> None:
    tdist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        torch.set_num_threads(1)
        _check_embeddings(rank)
        _check_views(rank)
    finally:
        tdist.destroy_process_group()


@pytest.mark.dist
def test_evaluation_across_two_gloo_processes_equals_one_process():
    mp.spawn(_worker, args=(dist.find_free_port(),), nprocs=WORLD, join=True)


def test_gather_single_process_dedupes_sorts_and_checks_completeness():
    emb = torch.tensor([[3.0], [1.0], [30.0], [2.0]])
    idx = torch.tensor([3, 1, 3, 2])
    out, out_idx = gather_embeddings(emb, idx)
    assert out_idx.tolist() == [1, 2, 3] and out.view(-1).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match=r"missing \[0\]"):
        gather_embeddings(emb, idx, num_samples=4)
    with pytest.raises(ValueError, match="outside"):
        gather_embeddings(emb, idx, num_samples=3)
    with pytest.raises(ValueError, match="one entry per row"):
        gather_embeddings(emb, idx[:3])
