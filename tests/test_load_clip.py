"""load_clip / load_clips: shapes, determinism, which frames and crops they use."""

import os

import numpy as np
import pytest
import torch

import cpd
from cpd.errors import VideoDecodeError
from cpd.video import decode, sampling, transforms
from tests.videos import read_index, write_video


def frame_indices(clip):
    """The index each frame of a normalised ``[3, T, H, W]`` clip encodes."""
    pixels = (clip * 0.225 + 0.45) * 255
    return [read_index(pixels[:, t]) for t in range(clip.shape[1])]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return write_video(
        tmp_path_factory.mktemp("v") / "wide.mp4",
        num_frames=120,
        width=240,
        height=136,
        texture=True,
    )


@pytest.fixture(scope="module")
def square(tmp_path_factory):
    # square frames: a centre crop keeps the whole frame, so its index stays readable
    return write_video(
        tmp_path_factory.mktemp("v") / "square.mkv", num_frames=120, width=128, height=128
    )


def test_public_api():
    assert cpd.load_clip is cpd.video.load_clip and cpd.load_clips is cpd.video.load_clips


def test_train_clip_shape_and_normalisation(wide):
    clip = cpd.load_clip(wide, seed=0)
    assert clip.shape == (3, 8, 112, 112) and clip.dtype == torch.float32
    assert clip.min() >= (0 - 0.45) / 0.225 - 1e-4 and clip.max() <= (1 - 0.45) / 0.225 + 1e-4
    big = cpd.load_clip(wide, num_frames=4, stride=2, crop_size=128, seed=0, scale_range=(136, 150))
    assert big.shape == (3, 4, 128, 128)


def test_same_seed_same_clip_other_seeds_differ(wide):
    a, b = cpd.load_clip(wide, seed=3), cpd.load_clip(wide, seed=3)
    assert torch.equal(a, b)
    others = [cpd.load_clip(wide, seed=s) for s in range(4, 8)]
    assert all(not torch.equal(a, o) for o in others)
    assert not torch.equal(cpd.load_clip(wide), cpd.load_clip(wide))  # seed=None: fresh draws


def test_train_clip_is_the_two_halves_composed(wide):
    g = torch.Generator().manual_seed(11)
    n, fps, w, h = decode.probe(wide)
    idx = sampling.random_window(n, 8, 4, fps, g)
    scale = transforms.draw_scale(g, (128, 170))
    size = transforms.short_side_size(h, w, scale)
    frames = decode.decode_frames(wide, idx, size, interpolation="FAST_BILINEAR")
    expected = transforms.crop_flip_normalize(torch.from_numpy(frames), 112, g)
    assert torch.equal(cpd.load_clip(wide, seed=11), expected)
    assert torch.equal(cpd.load_clip(wide, generator=torch.Generator().manual_seed(11)), expected)


def test_hflip_zero_never_flips(wide):
    for s in range(6):
        a = cpd.load_clip(wide, seed=s, hflip=0.0)
        b = cpd.load_clip(wide, seed=s, hflip=1.0)
        assert torch.equal(a, b.flip(-1))


def test_test_mode_uses_the_centre_window(square):
    clip = cpd.load_clip(square, crop_size=96, train=False)
    assert clip.shape == (3, 8, 96, 96)
    got = frame_indices(clip)
    assert got == sampling.centre_window(120, 8, 4, decode.probe(square)[1])
    assert torch.equal(clip, cpd.load_clip(square, crop_size=96, train=False, seed=5))


def test_short_video_repeats_frames(tmp_path):
    path = write_video(tmp_path / "short.mp4", num_frames=10, width=128, height=128)
    clip = cpd.load_clip(path, crop_size=96, train=False)
    assert frame_indices(clip) == [0, 4, 8, 9, 9, 9, 9, 9]
    assert cpd.load_clip(path, seed=0).shape == (3, 8, 112, 112)


def test_load_clips_windows_and_clip_major_order(square):
    stats = decode.DecodeStats()
    views = cpd.load_clips(square, num_clips=4, num_crops=3, crop_size=96, stats=stats)
    assert views.shape == (12, 3, 8, 96, 96)
    windows = sampling.uniform_windows(120, 4, 8, 4, decode.probe(square)[1])
    for c in range(4):
        for j in range(3):
            assert frame_indices(views[c * 3 + j]) == windows[c]
    assert stats.frames_converted == len({i for w in windows for i in w})  # decoded once


def test_load_clips_crops_left_centre_right(wide):
    views = cpd.load_clips(wide, num_clips=2, num_crops=3, crop_size=112)
    assert views.shape == (6, 3, 8, 112, 112)
    windows = sampling.uniform_windows(120, 2, 8, 4, 30.0)
    frames = torch.from_numpy(decode.decode_frames(wide, windows[1], (112, 197)))
    for j, left in enumerate([0, 43, 85]):
        expected = transforms.normalize(frames[:, :, left : left + 112])
        assert torch.equal(views[3 + j], expected)


def test_one_view_equals_test_mode_clip(wide):
    one = cpd.load_clips(wide, num_clips=1, num_crops=1)
    assert torch.equal(one[0], cpd.load_clip(wide, train=False))


def test_bad_file_raises(tmp_path):
    path = tmp_path / "bad.avi"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(VideoDecodeError, match="bad.avi"):
        cpd.load_clip(path)
    with pytest.raises(VideoDecodeError, match="bad.avi"):
        cpd.load_clips(path)


def test_200_loads_do_not_hang_or_leak(square):
    cpd.load_clip(square, seed=0)
    before = len(os.listdir("/proc/self/fd"))
    for i in range(200):
        cpd.load_clip(square, seed=i)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_cached_frames_run_the_same_transform_path(wide):
    # a dataset holding decode_all() frames in memory gets the clip load_clip makes
    cached = torch.from_numpy(decode.decode_all(wide))
    assert cached.shape == (120, 136, 240, 3)
    g = transforms.make_generator(5)
    idx = sampling.random_window(120, 8, 4, decode.probe(wide)[1], g)
    clip = transforms.train_transform(cached[idx], 112, g, scale_range=(136, 136))
    assert torch.equal(clip, cpd.load_clip(wide, seed=5, scale_range=(136, 136)))
