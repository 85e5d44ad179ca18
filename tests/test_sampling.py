"""Clip sampling tables: window placement, fps conversion, clamping, uniform test windows."""

import pytest
import torch

from cpd.video import sampling


@pytest.mark.parametrize(
    "fps,size,offsets",
    [
        (30, 32.0, [0, 4, 8, 13, 17, 22, 26, 31]),
        (30000 / 1001, 31.968, [0, 4, 8, 13, 17, 22, 26, 30]),
        (25, 26.667, [0, 3, 7, 11, 14, 18, 22, 25]),
        (60, 64.0, [0, 9, 18, 27, 36, 45, 54, 63]),
    ],
)
def test_fps_conversion_to_30fps_window(fps, size, offsets):
    clip_size = sampling.window_size(8, 4, fps)
    assert clip_size == pytest.approx(size, abs=1e-3)
    assert sampling.window_indices(0, 8, clip_size, 1000) == offsets
    assert sampling.window_indices(100, 8, clip_size, 1000) == [100 + o for o in offsets]


def test_window_of_16_frames_stride_4_at_30fps():
    # the finetuning recipe: a 64-frame window, 16 frames
    idx = sampling.window_indices(0, 16, sampling.window_size(16, 4, 30), 1000)
    assert idx[0] == 0 and idx[-1] == 63 and len(idx) == 16
    assert all(3 <= b - a <= 5 for a, b in zip(idx, idx[1:], strict=False))


def test_short_video_repeats_last_frame():
    assert sampling.window_indices(0, 8, 32.0, 10) == [0, 4, 8, 9, 9, 9, 9, 9]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # a video shorter than the window always starts at 0
        assert sampling.random_window(10, 8, 4, 30.0, g)[0] == 0
    assert sampling.window_indices(0, 8, 32.0, 1) == [0] * 8


def test_random_window_stays_inside_and_reaches_both_ends():
    g = torch.Generator().manual_seed(1)
    starts = set()
    for _ in range(2000):
        idx = sampling.random_window(40, 8, 4, 30.0, g)
        assert idx[0] >= 0 and idx[-1] <= 39
        assert idx == sampling.window_indices(idx[0], 8, 32.0, 40)
        starts.add(idx[0])
    assert starts == set(range(0, 9))  # 40 - 32 = 8 is the last start that fits


def test_random_window_is_a_function_of_the_generator_state():
    a = [
        sampling.random_window(300, 8, 4, 30.0, torch.Generator().manual_seed(5)) for _ in range(3)
    ]
    assert a[0] == a[1] == a[2]
    b = {
        tuple(sampling.random_window(300, 8, 4, 30.0, torch.Generator().manual_seed(s)))
        for s in range(20)
    }
    assert len(b) > 10


def test_uniform_windows_are_evenly_spaced_and_centred():
    windows = sampling.uniform_windows(332, 10, 8, 4, 30.0)  # delta = 300
    starts = [w[0] for w in windows]
    assert starts == [15, 45, 75, 105, 135, 165, 195, 225, 255, 285]
    assert sampling.centre_window(332, 8, 4, 30.0)[0] == 150
    assert (
        sampling.centre_window(332, 8, 4, 30.0) == sampling.uniform_windows(332, 1, 8, 4, 30.0)[0]
    )
    for w in windows:
        assert w[-1] <= 331


def test_uniform_windows_of_short_video_all_clamp_to_the_start():
    windows = sampling.uniform_windows(20, 10, 8, 4, 30.0)
    assert all(w == [0, 4, 8, 13, 17, 19, 19, 19] for w in windows)


def test_uniform_windows_at_25fps_use_the_shorter_source_window():
    windows = sampling.uniform_windows(100, 2, 8, 4, 25.0)
    # clip_size 26.67, delta 73.33: starts floor(18.33) and floor(55)
    assert [w[0] for w in windows] == [18, 55]
    assert windows[0][-1] - windows[0][0] == 25


@pytest.mark.parametrize("bad", [dict(num_frames=0), dict(stride=0), dict(fps=0.0)])
def test_bad_arguments_raise(bad):
    kw = dict(num_frames=8, stride=4, fps=30.0) | bad
    with pytest.raises(ValueError):
        sampling.window_size(**kw)
