"""Spatial transforms: shapes, values, and determinism under an explicit generator."""

import pytest
import torch

from cpd.video import transforms as T


def frames(t=8, h=150, w=200, seed=0):
    return torch.randint(
        0, 256, (t, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_default_scale_ranges():
    assert T.default_scale_range(112) == (128, 170)
    assert T.default_scale_range(224) == (256, 340)
    lo, hi = T.default_scale_range(160)
    assert 160 < lo < hi


def test_short_side_size_keeps_aspect_and_floors():
    assert T.short_side_size(272, 640, 128) == (128, 301)
    assert T.short_side_size(640, 272, 128) == (301, 128)
    assert T.short_side_size(100, 100, 64) == (64, 64)


def test_normalize_values_and_layout():
    x = torch.full((2, 4, 5, 3), 115, dtype=torch.uint8)
    x[..., 1] = 0
    out = T.normalize(x)
    assert out.shape == (3, 2, 4, 5) and out.dtype == torch.float32
    assert torch.allclose(out[0], torch.tensor((115 / 255 - 0.45) / 0.225))
    assert torch.allclose(out[1], torch.tensor((0 - 0.45) / 0.225))
    custom = T.normalize(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert torch.allclose(custom[0], torch.tensor((115 / 255 - 0.5) / 0.5))


def test_crop_flip_normalize_shape_and_seed_determinism():
    x = frames()
    a = T.crop_flip_normalize(x, 112, torch.Generator().manual_seed(3))
    b = T.crop_flip_normalize(x, 112, torch.Generator().manual_seed(3))
    assert a.shape == (3, 8, 112, 112) and a.dtype == torch.float32
    assert torch.equal(a, b)
    outs = {
        T.crop_flip_normalize(x, 112, torch.Generator().manual_seed(s)).sum().item()
        for s in range(10)
    }
    assert len(outs) > 5


def test_flip_probability_zero_and_one():
    x = frames()
    never = T.crop_flip_normalize(x, 112, torch.Generator().manual_seed(4), hflip=0.0)
    always = T.crop_flip_normalize(x, 112, torch.Generator().manual_seed(4), hflip=1.0)
    # the same draws pick the same crop; only the flip differs
    assert torch.equal(always, never.flip(-1))
    assert not torch.equal(always, never)


def test_crop_comes_from_the_input():
    x = frames()
    out = T.crop_flip_normalize(x, 112, torch.Generator().manual_seed(9), hflip=0.0)
    raw = ((out * 0.225 + 0.45) * 255).round().to(torch.uint8).permute(1, 2, 3, 0)
    # candidate positions whose top-left pixel matches, then the whole crop
    hits = (x[0, : 150 - 111, : 200 - 111] == raw[0, 0, 0]).all(-1).nonzero().tolist()
    found = [(t, c) for t, c in hits if torch.equal(x[:, t : t + 112, c : c + 112], raw)]
    assert len(found) == 1


def test_centre_crop_without_generator():
    x = frames(h=120, w=161)
    out = T.crop_flip_normalize(x, 112)
    expected = T.normalize(x[:, 4:116, 25:137])  # ceil((120-112)/2)=4, ceil((161-112)/2)=25
    assert torch.equal(out, expected)


def test_uniform_crop_offsets_landscape_and_portrait():
    assert T.uniform_crop_offsets(112, 200, 112, 3) == [(0, 0), (0, 44), (0, 88)]
    assert T.uniform_crop_offsets(200, 112, 112, 3) == [(0, 0), (44, 0), (88, 0)]
    assert T.uniform_crop_offsets(112, 201, 112, 1) == [(0, 45)]


def test_too_small_frames_raise():
    with pytest.raises(ValueError):
        T.crop_flip_normalize(frames(h=100), 112, torch.Generator().manual_seed(0))


def test_resize_short_side_uint8():
    x = frames(h=96, w=160)
    y = T.resize_short_side(x, 48)
    assert y.shape == (8, 48, 80, 3) and y.dtype == torch.uint8
    flat = torch.full((1, 96, 160, 3), 77, dtype=torch.uint8)
    assert torch.equal(
        T.resize_short_side(flat, 48), torch.full((1, 48, 80, 3), 77, dtype=torch.uint8)
    )
    assert T.resize_short_side(x, 96) is x


def test_train_transform_shape_and_determinism():
    x = frames(h=136, w=240)
    a = T.train_transform(x, 112, torch.Generator().manual_seed(1))
    b = T.train_transform(x, 112, torch.Generator().manual_seed(1))
    c = T.train_transform(x, 112, torch.Generator().manual_seed(2))
    assert a.shape == (3, 8, 112, 112)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_train_transform_makes_the_draws_of_the_decode_path():
    # scale, then crop, then flip: the order load_clip uses around the decoder
    x = frames(h=136, w=240)
    g1, g2 = torch.Generator().manual_seed(6), torch.Generator().manual_seed(6)
    a = T.train_transform(x, 112, g1, scale_range=(136, 136))
    assert T.draw_scale(g2, (136, 136)) == 136
    b = T.crop_flip_normalize(x, 112, g2)
    assert torch.equal(a, b)


def test_make_generator():
    assert torch.equal(
        torch.rand(3, generator=T.make_generator(7)), torch.rand(3, generator=T.make_generator(7))
    )
    assert not torch.equal(
        torch.rand(3, generator=T.make_generator(None)),
        torch.rand(3, generator=T.make_generator(None)),
    )
