"""Multi-view collection: per-video outputs in dataset order, failures kept apart, not replaced."""

from __future__ import annotations

import math

import pytest
import torch

from cpd.data import ActionRecord
from cpd.eval.common import EvalEnv
from cpd.eval.multiview import (
    DecodeFailure,
    NoReplaceLoader,
    classification_metrics,
    classifier_scores,
    collect_video_outputs,
    multiview_dataset,
)

ENV = EvalEnv(torch.device("cpu"), rank=0, world_size=1, owns_group=False, show_progress=False)
VIEWS, T, S = 6, 2, 4


def _fake_loader(path, num_clips, num_crops, num_frames, stride, crop_size):
    """Views that depend on the path only; 'bad' paths fail like an undecodable file."""
    from cpd.errors import VideoDecodeError

    if "bad" in str(path):
        raise VideoDecodeError(path, "garbage")
    g = torch.Generator().manual_seed(sum(map(ord, str(path))))
    return torch.randn(num_clips * num_crops, 3, num_frames, crop_size, crop_size, generator=g)


def _records(names: list[str]) -> list[ActionRecord]:
    return [ActionRecord(i, n, n, i % 3, f"c{i % 3}", "test") for i, n in enumerate(names)]


def _dataset(names: list[str]):
    return multiview_dataset(_records(names), num_clips=3, num_crops=2, num_frames=T, stride=1,
                             crop_size=S, loader=_fake_loader)  # fmt: skip


def test_outputs_are_per_video_in_order_and_failures_are_not_replaced():
    names = ["a.mp4", "bad1.mp4", "b.mp4", "c.mp4", "bad2.mp4"]
    seen = []

    def fn(views):
        seen.append(views.shape)
        return views.double().mean(dim=(1, 2, 3, 4))  # one number per view -> [VIEWS]

    out = collect_video_outputs(_dataset(names), fn, ENV, dim=VIEWS, batch_size=2)
    assert out.index.tolist() == list(range(5))
    assert all(s == (VIEWS, 3, T, S, S) for s in seen) and len(seen) == 3  # whole videos
    assert sorted(out.failed) == [1, 4] and out.failed[1] == ("bad1.mp4", "garbage")
    assert out.ok.tolist() == [True, False, True, True, False]
    assert torch.isnan(out.values[[1, 4]]).all()
    for i in (0, 2, 3):
        expected = _fake_loader(names[i], 3, 2, T, 1, S).double().mean(dim=(1, 2, 3, 4))
        assert torch.equal(out.values[i], expected)


def test_no_replace_loader_returns_a_failure_value():
    sample = _dataset(["bad.mp4"])[0]
    assert sample["video"] == DecodeFailure("bad.mp4", "garbage") and sample["index"] == 0
    assert NoReplaceLoader(_fake_loader)("x.mp4", num_clips=1, num_crops=1, num_frames=1,
                                         stride=1, crop_size=2).shape == (1, 3, 1, 2, 2)  # fmt: skip


def test_real_undecodable_file_is_reported(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video" * 10)
    ds = multiview_dataset(_records([str(bad)]), num_clips=2, num_crops=1, num_frames=2,
                           stride=1, crop_size=8)  # fmt: skip
    out = collect_video_outputs(ds, lambda v: v.double().mean().view(1), ENV, dim=1)
    assert list(out.failed) == [0] and "cannot open" in out.failed[0][1]


def test_classifier_scores_average_logits_by_default_or_softmax_over_views():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * T * S * S, 5)).double()
    views = torch.randn(VIEWS, 3, T, S, S, dtype=torch.float64)
    logits = model(views)
    naive = sum(torch.softmax(logits[v], 0) for v in range(VIEWS)) / VIEWS
    assert torch.allclose(classifier_scores(model, "softmax")(views), naive, atol=1e-15)
    assert torch.allclose(classifier_scores(model)(views), logits.mean(0))  # official test.py
    with pytest.raises(ValueError):
        classifier_scores(model, "max")


def test_classification_metrics_cap_top5_at_the_class_count():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = torch.tensor([1, 0, 0, 2])
    m = classification_metrics(scores, labels, 3)
    assert m["top1"] == 0.5 and m["top5"] == 1.0  # top-3 with 3 classes
    assert m["per_class_accuracy"] == [0.5, 1.0, 0.0]
    assert math.isclose(m["mean_class_accuracy"], 0.5)
    assert m["confusion_matrix"] == [[1, 0, 1], [0, 1, 0], [1, 0, 0]]


def test_bad_view_settings_are_rejected():
    with pytest.raises(ValueError, match="num_clips"):
        multiview_dataset(_records(["a"]), num_clips=0, num_crops=1, num_frames=1, stride=1,
                          crop_size=4)  # fmt: skip
