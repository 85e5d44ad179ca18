"""Clip sampling: which frame indices a clip uses. Pure index arithmetic, no decoding.

Frame ``i`` is the i-th frame in presentation order of a full sequential decode (see
``cpd.video.decode``). A clip is ``num_frames`` frames spread over a *window* that spans
``num_frames * stride`` frames at a 30 fps target rate.

How the official code (MCG-NJU/CPD-Video, ``datasets/decoder.py``, itself from PySlowFast)
maps a source rate to the 30 fps target, and what we keep of it:

* the window covers ``clip_size = num_frames * stride * fps / target_fps`` *source* frames
  (e.g. 32 frames at 30 fps, 26.7 at 25 fps, 64 at 60 fps, 31.97 at 29.97 fps);
* a training window starts uniformly in ``[0, max(num_video_frames - clip_size, 0)]``;
* the sampled frames are ``linspace(start, start + clip_size - 1, num_frames)`` truncated to
  integers and clamped to the last frame, so a video shorter than the window repeats its
  last frame. At 30 fps with stride 4 that gives offsets 0, 4, 8, 13, 17, 22, 26, 31 (the
  window's both ends are included), not exactly every 4th frame; we keep this spacing so
  clips match the official recipe.

We differ in two places: the training start is drawn as an integer (the official float start is
truncated by the decoder anyway), and test windows are centred in equal segments,
``start_k = delta * (k + 1/2) / num_clips``, rather than the official ``delta * k / num_clips``
(which never reaches the end of the video). With one clip that is the centre window, so
``load_clips(num_clips=1, num_crops=1)`` equals ``load_clip(train=False)``.
"""

from __future__ import annotations

import math

import torch

TARGET_FPS = 30.0


def window_size(num_frames: int, stride: int, fps: float, target_fps: float = TARGET_FPS) -> float:
    """Length, in source frames, of a window of ``num_frames * stride`` frames at ``target_fps``."""
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames}, {stride}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return num_frames * stride * fps / target_fps


def window_indices(
    start: float, num_frames: int, clip_size: float, num_video_frames: int
) -> list[int]:
    """Frame indices of a window starting at ``start``: official linspace, truncated, clamped."""
    if num_video_frames < 1:
        raise ValueError("a video needs at least one frame")
    last = num_video_frames - 1
    if num_frames == 1:
        offsets = [0.0]
    else:
        step = (clip_size - 1) / (num_frames - 1)
        offsets = [k * step for k in range(num_frames)]
    # a tiny epsilon keeps exact integers exact despite float error (e.g. 31/7*7 -> 30.999...)
    return [min(max(int(math.floor(start + o + 1e-9)), 0), last) for o in offsets]


def max_start(num_video_frames: int, clip_size: float) -> int:
    """Largest integer start such that the whole window lies inside the video (0 if none does)."""
    return max(int(math.floor(num_video_frames - clip_size + 1e-9)), 0)


def random_window(
    num_video_frames: int,
    num_frames: int,
    stride: int,
    fps: float,
    generator: torch.Generator,
    target_fps: float = TARGET_FPS,
) -> list[int]:
    """Training clip: a window placed uniformly at random (one draw from ``generator``)."""
    clip_size = window_size(num_frames, stride, fps, target_fps)
    hi = max_start(num_video_frames, clip_size)
    start = int(torch.randint(0, hi + 1, (1,), generator=generator).item())
    return window_indices(start, num_frames, clip_size, num_video_frames)


def uniform_windows(
    num_video_frames: int,
    num_clips: int,
    num_frames: int,
    stride: int,
    fps: float,
    target_fps: float = TARGET_FPS,
) -> list[list[int]]:
    """Test clips: ``num_clips`` windows centred in equal segments of the possible starts."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    clip_size = window_size(num_frames, stride, fps, target_fps)
    delta = max(num_video_frames - clip_size, 0.0)
    windows = []
    for k in range(num_clips):
        start = math.floor(delta * (k + 0.5) / num_clips + 1e-9)
        windows.append(window_indices(start, num_frames, clip_size, num_video_frames))
    return windows


def centre_window(
    num_video_frames: int, num_frames: int, stride: int, fps: float, target_fps: float = TARGET_FPS
) -> list[int]:
    """The single test window in the middle of the video."""
    return uniform_windows(num_video_frames, 1, num_frames, stride, fps, target_fps)[0]
