"""In-batch InfoNCE: equals per-sample softmax cross-entropies; temperature learns and clamps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cpd.losses import InfoNCELoss


def unit(b: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=1).requires_grad_(True)


def naive_infonce(video, text, scale: float) -> tuple[float, float]:
    """Loops over samples: −log softmax of the matching pair, both directions."""
    video, text = video.detach(), text.detach()
    b = video.shape[0]
    v2t = t2v = 0.0
    for i in range(b):
        row = [scale * float(video[i] @ text[j]) for j in range(b)]
        col = [scale * float(text[i] @ video[j]) for j in range(b)]
        v2t += -row[i] + math.log(sum(math.exp(x) for x in row))
        t2v += -col[i] + math.log(sum(math.exp(x) for x in col))
    return v2t / b, t2v / b


@pytest.mark.parametrize("batch", [1, 5])
def test_equals_naive_both_directions(batch):
    video, text = unit(batch, 8, 1), unit(batch, 8, 2)
    loss = InfoNCELoss()
    out = loss(video, text)
    v2t, t2v = naive_infonce(video, text, 1 / 0.07)
    assert out["video_to_text"].item() == pytest.approx(v2t, rel=1e-5, abs=1e-6)
    assert out["text_to_video"].item() == pytest.approx(t2v, rel=1e-5, abs=1e-6)
    assert out["loss"].item() == pytest.approx((v2t + t2v) / 2, rel=1e-5, abs=1e-6)
    assert loss.temperature == pytest.approx(0.07)


def test_directions_differ_when_logits_not_symmetric():
    video, text = unit(4, 8, 1), unit(4, 8, 2)
    out = InfoNCELoss()(video, text)
    assert abs(out["video_to_text"].item() - out["text_to_video"].item()) > 1e-4


def test_gradients_reach_features_and_temperature():
    video, text = unit(4, 8, 1), unit(4, 8, 2)
    loss = InfoNCELoss()
    params = list(loss.parameters())
    assert len(params) == 1 and params[0] is loss.logit_scale
    loss(video, text)["loss"].backward()
    assert video.grad.abs().sum() > 0 and text.grad.abs().sum() > 0
    # Reference gradient of the temperature from an independent autograd computation.
    s = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    v, t = video.detach(), text.detach()
    logits = s.exp() * v @ t.T
    target = torch.arange(4)
    ref = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    ref.backward()
    assert float(loss.logit_scale.grad) == pytest.approx(float(s.grad), rel=1e-5)
    assert float(loss.logit_scale.grad) != 0


def test_temperature_clamped_like_clip():
    video, text = unit(3, 8, 1), unit(3, 8, 2)
    loss = InfoNCELoss(max_logit_scale=100.0)
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(1000.0))
    out = loss(video, text)
    assert loss.temperature == pytest.approx(0.01)
    assert loss.logit_scale.item() == pytest.approx(math.log(100.0))  # the stored value
    v2t, t2v = naive_infonce(video, text, 100.0)
    assert out["loss"].item() == pytest.approx((v2t + t2v) / 2, rel=1e-5)


def test_temperature_pushed_below_the_range_can_come_back():
    """A step that sends log(1/T) below 0 must not leave it stuck at T = 1 with no gradient."""
    video = unit(6, 8, 1)
    loss = InfoNCELoss()
    with torch.no_grad():
        loss.logit_scale.fill_(-2.0)  # as an SGD step with a large gradient can do
    out = loss(video, video.detach().clone())  # aligned pairs: a lower T lowers the loss
    assert loss.logit_scale.item() == 0.0 and loss.temperature == pytest.approx(1.0)
    out["loss"].backward()
    assert float(loss.logit_scale.grad) < 0  # gradient descent raises 1/T again


def test_fixed_temperature_is_a_buffer():
    loss = InfoNCELoss(0.1, learn_temperature=False)
    assert list(loss.parameters()) == [] and "logit_scale" in loss.state_dict()
    video, text = unit(4, 8, 1), unit(4, 8, 2)
    v2t, t2v = naive_infonce(video, text, 10.0)
    assert loss(video, text)["loss"].item() == pytest.approx((v2t + t2v) / 2, rel=1e-5)


def test_loss_is_a_proper_contrast():
    """Aligned pairs give a far lower loss than shuffled pairs."""
    video = unit(6, 16, 1)
    aligned = InfoNCELoss()(video, video.detach().clone())["loss"]
    shuffled = InfoNCELoss()(video, video.detach().roll(1, dims=0))["loss"]
    assert aligned.item() < 0.1 < shuffled.item()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="video and text"):
        InfoNCELoss()(unit(3, 8, 1), unit(2, 8, 2))
    with pytest.raises(ValueError, match="world_size"):
        InfoNCELoss(world_size=2)(unit(3, 8, 1), unit(3, 8, 2))
    with pytest.raises(ValueError, match="init_temperature"):
        InfoNCELoss(init_temperature=0.0)
