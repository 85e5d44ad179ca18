"""Zero-shot: class-name text, prompt-ensemble embeddings, random class splits, metrics."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

from cpd.errors import DataError
from cpd.eval.zeroshot import (
    DEFAULT_TEMPLATES,
    class_name_to_text,
    class_text_embeddings,
    random_class_splits,
    read_templates,
    zeroshot_metrics,
)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("ApplyEyeMakeup", "apply eye makeup"),
        ("brush_hair", "brush hair"),
        ("YoYo", "yo yo"),
        ("MovingLeft", "moving left"),
        ("RotatingCounterclockwise", "rotating counterclockwise"),
        ("PlayingDhol", "playing dhol"),
        ("shoot_ball", "shoot ball"),
        ("TVShow", "tv show"),
        ("Jump3Times", "jump 3 times"),
        ("fall_floor ", "fall floor"),
    ],
)
def test_class_name_to_text(name, text):
    assert class_name_to_text(name) == text


def _fake_encoder(texts: list[str]) -> torch.Tensor:
    """An unnormalised embedding per string that depends on the string alone."""
    rows = [torch.randn(6, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) * 3
            for t in texts]  # fmt: skip
    return torch.stack(rows).float()


def test_template_averaging_equals_a_naive_computation():
    classes = ["ApplyEyeMakeup", "brush_hair", "Growing"]
    templates = ["a video of {}.", "{}", "a person {}."]
    got = class_text_embeddings(_fake_encoder, classes, templates, batch_size=2)
    for c, name in enumerate(classes):
        unit = [F.normalize(_fake_encoder([t.format(class_name_to_text(name))])[0].double(), dim=0)
                for t in templates]  # fmt: skip
        mean = sum(unit) / len(unit)
        assert torch.allclose(got[c], mean / mean.norm(), atol=1e-12)
    assert torch.allclose(got.norm(dim=1), torch.ones(3, dtype=torch.float64))
    # the batch size changes nothing
    assert torch.equal(
        got, class_text_embeddings(_fake_encoder, classes, templates, batch_size=100)
    )
    assert len(DEFAULT_TEMPLATES) >= 4 and all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)


def test_random_class_splits_are_determined_by_the_seed():
    a = random_class_splits(101, 5, seed=7)
    assert a == random_class_splits(101, 5, seed=7)
    assert a != random_class_splits(101, 5, seed=8)
    assert random_class_splits(101, 3, seed=7) == a[:3]  # split i depends on (seed, i) only
    assert all(len(s) == 50 and s == sorted(set(s)) and s[0] >= 0 and s[-1] < 101 for s in a)
    assert len({tuple(s) for s in a}) == 5
    with pytest.raises(ValueError):
        random_class_splits(1, 1, seed=0)


def test_zeroshot_metrics_among_all_and_candidate_classes():
    class_emb = torch.eye(4, dtype=torch.float64)
    video = torch.tensor([[1.0, 0.5, 0, 0], [0, 0.2, 1.0, 0], [0, 0, 0.3, 1.0], [0.9, 1.0, 0, 0]])
    labels = torch.tensor([0, 2, 3, 0])
    m = zeroshot_metrics(video, labels, class_emb)
    assert m["top1"] == 0.75 and m["chance_top1"] == 0.25 and m["num_classes"] == 4
    assert m["top5"] == 1.0 and m["chance_top5"] == 1.0  # top-4 of 4
    # among classes {0, 3}: videos 0, 2, 3 count; video 3 now scores 0.9 vs 0 -> correct
    m = zeroshot_metrics(video, labels, class_emb, candidates=[0, 3])
    assert m["num_videos"] == 3 and m["top1"] == 1.0 and m["chance_top1"] == 0.5
    with pytest.raises(DataError):
        zeroshot_metrics(video, labels, class_emb, candidates=[1])


def test_read_templates(tmp_path):
    good = tmp_path / "t.txt"
    good.write_text("a video of {}.\n\n{}\n")
    assert read_templates(good) == ["a video of {}.", "{}"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a video of {}.\nno slot here\n")
    with pytest.raises(DataError, match="line 2"):
        read_templates(bad)
