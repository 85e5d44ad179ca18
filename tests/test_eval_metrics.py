"""Classification metrics against naive loop implementations, ties and edge cases included."""

from __future__ import annotations

import math

import pytest
import torch

from cpd.eval.metrics import (
    aggregate_views,
    confusion_matrix,
    mean_std,
    per_class_accuracy,
    topk_accuracy,
)


def _tied_scores(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    # few distinct values, so many ties, also with the true class
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (n, c), generator=g).float()
    labels = torch.randint(0, c, (n,), generator=g)
    return scores, labels


def _naive_topk(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    correct = 0
    for row, label in zip(scores.tolist(), labels.tolist(), strict=True):
        # the documented order: by score descending, ties by lower class index
        order = sorted(range(len(row)), key=lambda c: (-row[c], c))
        correct += label in order[:k]
    return correct / len(labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_matches_naive_with_ties(seed):
    scores, labels = _tied_scores(200, 7, seed)
    got = topk_accuracy(scores, labels, ks=(1, 2, 5, 7))
    for k in (1, 2, 5, 7):
        assert got[f"top{k}"] == pytest.approx(_naive_topk(scores, labels, k), abs=1e-12)
    assert got["top7"] == 1.0


def test_topk_on_continuous_scores_matches_torch_topk():
    g = torch.Generator().manual_seed(3)
    scores, labels = torch.randn(300, 10, generator=g), torch.randint(0, 10, (300,), generator=g)
    got = topk_accuracy(scores, labels)
    top5 = scores.topk(5, dim=1).indices
    assert got["top5"] == pytest.approx((top5 == labels[:, None]).any(1).double().mean().item())


def test_top1_agrees_with_argmax_and_confusion_matrix_under_ties():
    scores, labels = _tied_scores(500, 5, 4)
    top1 = topk_accuracy(scores, labels, ks=(1,))["top1"]
    assert top1 == pytest.approx((scores.argmax(1) == labels).double().mean().item())
    cm = confusion_matrix(scores, labels, 5)
    assert top1 == pytest.approx(cm.diagonal().sum().item() / 500)


def test_topk_errors():
    scores, labels = torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="top-4"):
        topk_accuracy(scores, labels, ks=(1, 4))
    with pytest.raises(ValueError, match="top-0"):
        topk_accuracy(scores, labels, ks=(0,))
    with pytest.raises(ValueError, match="outside"):
        topk_accuracy(scores, torch.tensor([0, 1, 3, 0]), ks=(1,))
    with pytest.raises(ValueError, match="NaN"):
        topk_accuracy(torch.full((4, 3), math.nan), labels, ks=(1,))
    with pytest.raises(ValueError, match="at least one"):
        topk_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ks=(1,))
    with pytest.raises(TypeError):
        topk_accuracy(scores, labels.float(), ks=(1,))


def test_confusion_matrix_and_per_class_accuracy_match_loops():
    g = torch.Generator().manual_seed(5)
    pred = torch.randint(0, 6, (400,), generator=g)
    labels = torch.randint(0, 5, (400,), generator=g)  # class 5 never occurs as a label
    cm = confusion_matrix(pred, labels, 6)
    naive = [[0] * 6 for _ in range(6)]
    for p, t in zip(pred.tolist(), labels.tolist(), strict=True):
        naive[t][p] += 1
    assert cm.tolist() == naive
    acc = per_class_accuracy(pred, labels, 6)
    for c in range(5):
        assert acc[c].item() == pytest.approx(naive[c][c] / sum(naive[c]))
    assert math.isnan(acc[5].item())
    with pytest.raises(ValueError, match="predictions"):
        confusion_matrix(torch.tensor([0, 6]), torch.tensor([0, 1]), 6)


def _naive_aggregate(scores, video_index):
    groups: dict[int, list[list[float]]] = {}
    for row, v in zip(scores.tolist(), video_index.tolist(), strict=True):
        groups.setdefault(v, []).append(row)
    ids = sorted(groups)
    means = [[math.fsum(col) / len(col) for col in zip(*groups[v], strict=True)] for v in ids]
    return torch.tensor(means, dtype=torch.float64), ids


def test_aggregate_views_matches_naive_and_is_order_independent():
    g = torch.Generator().manual_seed(6)
    video_index = torch.arange(13).repeat_interleave(30)[torch.randperm(390, generator=g)]
    scores = torch.randn(390, 11, generator=g).softmax(1) * 10 ** torch.randn(390, 1, generator=g)
    got, ids = aggregate_views(scores, video_index, views_per_video=30)
    ref, ref_ids = _naive_aggregate(scores, video_index)
    assert ids.tolist() == ref_ids and got.dtype == scores.dtype
    assert torch.allclose(got.double(), ref, rtol=1e-6, atol=0)
    for _ in range(3):  # bitwise equal whatever the order the views arrive in
        perm = torch.randperm(390, generator=g)
        again, again_ids = aggregate_views(scores[perm], video_index[perm])
        assert torch.equal(again, got) and torch.equal(again_ids, ids)


def test_aggregate_views_counts_duplicates_and_checks_view_count():
    scores = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [4.0, 4.0]])
    video_index = torch.tensor([7, 7, 7, 2])
    got, ids = aggregate_views(scores, video_index)
    assert ids.tolist() == [2, 7]
    assert torch.allclose(got, torch.tensor([[4.0, 4.0], [2 / 3, 1 / 3]]))
    with pytest.raises(ValueError, match="video 2 has 1 views, expected 3"):
        aggregate_views(scores, video_index, views_per_video=3)


def test_mean_std():
    mean, std = mean_std([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9) and std == pytest.approx(0.1)
    assert mean_std([0.8, 0.9, 1.0], ddof=0)[1] == pytest.approx(math.sqrt(2 / 300))
    mean, std = mean_std([0.5])
    assert mean == 0.5 and math.isnan(std)
    with pytest.raises(ValueError):
        mean_std([])
    with pytest.raises(ValueError):
        mean_std([1.0, math.nan])
