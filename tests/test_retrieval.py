"""Retrieval metrics against a naive loop implementation: ties (against the query), several
captions, chunking."""

from __future__ import annotations

import statistics

import pytest
import torch

from cpd.eval.retrieval import retrieval_metrics, retrieval_ranks


def _int_embeddings(n: int, m: int, seed: int, d: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    # small integers: every dot product is exact in float32 and ties are frequent
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(-2, 3, (n, d), generator=g).float()
    text = torch.randint(-2, 3, (m, d), generator=g).float()
    return video, text


def _naive(video, text, t2v_index):
    v, t = video.tolist(), text.tolist()
    sim = [[sum(a * b for a, b in zip(tr, vr, strict=True)) for vr in v] for tr in t]  # [M][N]
    # ties count against the query: every *other* item scoring >= the true one goes first
    t2v = []
    for j, row in enumerate(sim):
        true = row[t2v_index[j]]
        t2v.append(1 + sum(s >= true for i, s in enumerate(row) if i != t2v_index[j]))
    v2t = []
    for i in range(len(v)):
        caps = [j for j in range(len(t)) if t2v_index[j] == i]
        if not caps:
            continue
        best = max(sim[j][i] for j in caps)
        v2t.append(1 + sum(sim[j][i] >= best for j in range(len(t)) if t2v_index[j] != i))
    return t2v, v2t


@pytest.mark.parametrize("chunk_size", [1, 4, 4096])
def test_paired_ranks_match_naive_with_ties(chunk_size):
    video, text = _int_embeddings(37, 37, 0)
    ranks = retrieval_ranks(video, text, chunk_size=chunk_size)
    t2v, v2t = _naive(video, text, list(range(37)))
    assert ranks.t2v.tolist() == t2v and ranks.v2t.tolist() == v2t
    assert ranks.v2t_videos.tolist() == list(range(37))


@pytest.mark.parametrize("chunk_size", [1, 5, 4096])
def test_several_captions_per_video_and_distractors(chunk_size):
    # 20 videos, 50 captions; videos 3 and 17 have no caption (gallery-only distractors)
    g = torch.Generator().manual_seed(1)
    owners = [i for i in range(20) if i not in (3, 17)]
    t2v_index = torch.tensor(owners + [owners[i] for i in torch.randint(0, 18, (32,), generator=g)])
    t2v_index = t2v_index[torch.randperm(50, generator=g)]
    video, text = _int_embeddings(20, 50, 2)
    ranks = retrieval_ranks(video, text, text_to_video=t2v_index, chunk_size=chunk_size)
    t2v, v2t = _naive(video, text, t2v_index.tolist())
    assert ranks.t2v.tolist() == t2v and ranks.v2t.tolist() == v2t
    assert ranks.v2t_videos.tolist() == owners
    counts = torch.bincount(t2v_index, minlength=20)
    assert ranks.captions_per_video.tolist() == counts[owners].tolist()

    m = retrieval_metrics(video, text, text_to_video=t2v_index, chunk_size=chunk_size)
    assert m["t2v_num_queries"] == 50 and m["v2t_num_queries"] == 18
    for k in (1, 5, 10):
        assert m[f"t2v_r{k}"] == pytest.approx(sum(r <= k for r in t2v) / 50)
        assert m[f"v2t_r{k}"] == pytest.approx(sum(r <= k for r in v2t) / 18)
    assert m["t2v_median_rank"] == statistics.median(t2v)
    assert m["v2t_median_rank"] == statistics.median(v2t)
    assert m["t2v_mean_rank"] == pytest.approx(statistics.fmean(t2v))
    assert m["t2v_chance_r5"] == 5 / 20


def test_perfect_and_reversed_retrieval_on_continuous_embeddings():
    g = torch.Generator().manual_seed(3)
    video = torch.nn.functional.normalize(torch.randn(100, 16, generator=g), dim=1)
    m = retrieval_metrics(video, video.clone(), chunk_size=7)
    assert m["t2v_r1"] == 1.0 and m["v2t_r1"] == 1.0 and m["t2v_median_rank"] == 1.0
    m = retrieval_metrics(video, -video)  # every true pair is the least similar
    assert m["t2v_mean_rank"] == 100.0 and m["v2t_r10"] == 0.0


def test_ties_count_against_the_query():
    video = torch.ones(5, 4)  # every similarity is equal
    m = retrieval_metrics(video, torch.ones(5, 4))
    assert m["t2v_r1"] == 0.0 and m["v2t_mean_rank"] == 5.0 and m["t2v_r5"] == 1.0
    # a video's own captions tying with its best one do not push it down
    ranks = retrieval_ranks(torch.eye(2), torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0]]),
                            text_to_video=torch.tensor([0, 0, 1]))  # fmt: skip
    assert ranks.v2t.tolist() == [1, 1] and ranks.t2v.tolist() == [1, 1, 1]


def test_ranks_do_not_depend_on_gallery_order():
    video, text = _int_embeddings(40, 40, 4)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    a = retrieval_ranks(video, text)
    b = retrieval_ranks(video[perm], text, text_to_video=torch.argsort(perm))
    assert torch.equal(a.t2v, b.t2v)


def test_chance_levels():
    video, text = _int_embeddings(10, 30, 5)
    t2v_index = torch.arange(10).repeat(3)  # three captions per video
    m = retrieval_metrics(video, text, text_to_video=t2v_index, ks=(1, 5, 10, 20))
    assert m["t2v_chance_r1"] == 0.1 and m["t2v_chance_r20"] == 1.0
    assert m["v2t_chance_r1"] == pytest.approx(3 / 30)
    # 1 - C(27, 5) / C(30, 5): one of 3 captions among the first 5 of 30
    assert m["v2t_chance_r5"] == pytest.approx(
        1 - (27 * 26 * 25 * 24 * 23) / (30 * 29 * 28 * 27 * 26)
    )
    assert m["v2t_chance_r20"] == pytest.approx(1.0 - (10 * 9 * 8) / (30 * 29 * 28))
    paired = retrieval_metrics(*_int_embeddings(10, 10, 6))
    assert paired["v2t_chance_r5"] == pytest.approx(0.5)


def test_errors():
    video, text = _int_embeddings(4, 5, 7)
    with pytest.raises(ValueError, match="text_to_video"):
        retrieval_metrics(video, text)
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(video, text, text_to_video=torch.tensor([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="dim"):
        retrieval_metrics(video, text[:, :2], text_to_video=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(video * float("nan"), video)
    with pytest.raises(ValueError, match="recall@0"):
        retrieval_metrics(video, video, ks=(0,))
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics(video, video, chunk_size=0)
