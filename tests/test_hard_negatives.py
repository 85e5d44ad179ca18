"""Temporal hard negatives: the clips, the validity mask, and their terms in both losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cpd.losses import InfoNCELoss, MemoryBankNCELoss, negative_generator, temporal_negatives
from cpd.losses.hard_negatives import as_hard_batch

N, D, K, T = 16, 8, 5, 0.07


def indexed_clips(b: int, t: int) -> torch.Tensor:
    """Clip i's frame j is filled with the value 10·i + j, so frame order is readable."""
    values = torch.arange(b).view(b, 1, 1, 1, 1) * 10.0 + torch.arange(t).view(1, 1, t, 1, 1)
    return values.expand(b, 3, t, 4, 4).clone()


def frame_order(clip: torch.Tensor) -> list[int]:
    return [int(v) % 10 for v in clip[0, :, 0, 0]]


def unit(b: int, seed: int, requires_grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, D, generator=g), dim=1).requires_grad_(requires_grad)


def test_reversed_clips_sample_major():
    clips = indexed_clips(3, 5)
    neg, valid = temporal_negatives(clips)
    assert neg.shape == (3, 3, 5, 4, 4) and valid.shape == (3, 1) and valid.all()
    assert torch.equal(neg, clips.flip(2))
    assert frame_order(neg[1]) == [4, 3, 2, 1, 0]


def test_shuffled_clips_are_non_identity_permutations_and_reproducible():
    clips = indexed_clips(16, 4)
    neg, valid = temporal_negatives(clips, shuffle=True, generator=torch.Generator().manual_seed(3))
    assert neg.shape == (32, 3, 4, 4, 4) and valid.shape == (16, 2) and valid.all()
    orders = [frame_order(neg[2 * i + 1]) for i in range(16)]
    for i, order in enumerate(orders):
        assert sorted(order) == [0, 1, 2, 3] and order != [0, 1, 2, 3]
        assert int(neg[2 * i + 1, 0, 0, 0, 0]) // 10 == i  # clip i's own frames
        assert frame_order(neg[2 * i]) == [3, 2, 1, 0]
    assert len({tuple(o) for o in orders}) > 3
    again, _ = temporal_negatives(clips, shuffle=True, generator=torch.Generator().manual_seed(3))
    other, _ = temporal_negatives(clips, shuffle=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(neg, again) and not torch.equal(neg, other)
    with pytest.raises(ValueError, match="generator"):
        temporal_negatives(clips, shuffle=True)


def test_static_palindromic_and_single_frame_clips_are_invalid():
    g = torch.Generator().manual_seed(0)
    frame_a, frame_b = torch.rand(3, 1, 6, 6, generator=g), torch.rand(3, 1, 6, 6, generator=g)
    static = frame_a.expand(3, 4, 6, 6)
    palindrome = torch.cat([frame_a, frame_b, frame_a], dim=1)
    moving = torch.cat([frame_a, frame_b, frame_b], dim=1)
    _, valid = temporal_negatives(torch.stack([static[:, :3], palindrome, moving]))
    assert valid.flatten().tolist() == [False, False, True]
    _, valid = temporal_negatives(frame_a.unsqueeze(0), shuffle=True, generator=g)
    assert valid.tolist() == [[False, False]]
    # "Equal" means within the tolerance: tiny noise on a still scene is still a still scene.
    noisy = static + 1e-4 * torch.rand(static.shape, generator=g)
    assert temporal_negatives(noisy.unsqueeze(0))[1].tolist() == [[False]]
    assert temporal_negatives(noisy.unsqueeze(0), tolerance=1e-6)[1].tolist() == [[True]]


def nce_pair(seed: int = 0) -> tuple[MemoryBankNCELoss, MemoryBankNCELoss]:
    kw = dict(num_negatives=K, temperature=T, seed=seed)
    return MemoryBankNCELoss(N, D, **kw), MemoryBankNCELoss(N, D, **kw)


def gen() -> torch.Generator:
    return negative_generator(0, 0, 0, 0)


def test_nce_hard_term_equals_naive_and_skips_invalid():
    with_hard, without = nce_pair()
    video, text, hard = unit(3, 1), unit(3, 2, True), unit(6, 3, True)
    idx = torch.tensor([0, 4, 9])
    valid = torch.tensor([[True, False], [True, True], [False, False]])
    out = with_hard(video, text, idx, generator=gen(), hard_video=hard, hard_valid=valid)
    ref = without(video, text, idx, generator=gen())
    z_t, c = float(with_hard.z_text), K / N
    naive = 0.0
    for b in range(3):
        for m in range(2):
            if valid[b, m]:
                p = math.exp(float(hard[2 * b + m].detach() @ text[b].detach()) / T) / z_t
                naive += -math.log(c / (p + c))
    assert out["text_hard"].item() == pytest.approx(naive / 3, rel=1e-5)
    for key in ref:
        if key != "loss":
            assert out[key].item() == pytest.approx(ref[key].item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(ref["loss"].item() + naive / 3, rel=1e-5)
    out["loss"].backward()
    assert hard.grad[[0, 2, 3]].abs().sum() > 0  # valid negatives push
    assert torch.equal(hard.grad[[1, 4, 5]], torch.zeros(3, D))  # invalid ones are ignored


def test_static_clips_leave_both_losses_unchanged():
    g = torch.Generator().manual_seed(1)
    clips = torch.rand(3, 3, 1, 5, 5, generator=g).expand(3, 3, 4, 5, 5)  # three still scenes
    _, valid = temporal_negatives(clips)
    assert not valid.any()
    hard = unit(3, 3)  # whatever the video tower makes of the reversed copies
    video, text, idx = unit(3, 1), unit(3, 2), torch.tensor([1, 2, 3])
    with_hard, without = nce_pair()
    out = with_hard(video, text, idx, generator=gen(), hard_video=hard, hard_valid=valid)
    ref = without(video, text, idx, generator=gen())
    assert out["text_hard"].item() == 0.0 and out["loss"].item() == ref["loss"].item()
    info = InfoNCELoss()
    out = info(video, text, hard_video=hard, hard_valid=valid)
    ref = info(video, text)
    assert out["loss"].item() == pytest.approx(ref["loss"].item(), rel=1e-7)


def test_infonce_hard_column_equals_naive():
    video, text, hard = unit(3, 1), unit(3, 2), unit(3, 3, True)
    valid = torch.tensor([[True], [False], [True]])
    loss = InfoNCELoss()
    out = loss(video, text, hard_video=hard, hard_valid=valid)
    s = 1 / 0.07
    t2v = 0.0
    for i in range(3):
        logits = [s * float(text[i] @ video[j]) for j in range(3)]
        if valid[i, 0]:
            logits.append(s * float(text[i] @ hard[i].detach()))
        t2v += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    assert out["text_to_video"].item() == pytest.approx(t2v / 3, rel=1e-5)
    assert out["video_to_text"].item() == pytest.approx(loss(video, text)["video_to_text"].item())
    out["loss"].backward()
    assert hard.grad[0].abs().sum() > 0 and torch.equal(hard.grad[1], torch.zeros(D))


def test_as_hard_batch_shapes():
    h, v = as_hard_batch(torch.zeros(6, D), None, 3)
    assert h.shape == (3, 2, D) and v.dtype == torch.bool and v.all()
    with pytest.raises(ValueError, match="multiple"):
        as_hard_batch(torch.zeros(5, D), None, 3)
    with pytest.raises(ValueError, match="hard_valid"):
        as_hard_batch(torch.zeros(6, D), torch.ones(3, 1, dtype=torch.bool), 3)
