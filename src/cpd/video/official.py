"""The official CPD training-clip loader, re-implemented as the baseline of ``cpd bench load``.

Not used for training. It is the one module besides ``decode`` that opens video files, and
only to time the official path. What MCG-NJU/CPD-Video does per training clip
(``datasets/instagram.py``, ``decoder.py``, ``transform.py``, ``video_container.py``), and we
repeat step by step:

1. open the file with PyAV (they set ``thread_type = "AUTO"``, which hangs with PyAV 18; we
   decode with one thread, as the benchmark runs single-threaded anyway);
2. from the header: fps = ``average_rate``, frame count = ``stream.frames``, pts per frame =
   ``duration / frames``; draw a float start uniformly in ``[0, frames - clip_size]`` with
   ``clip_size = num_frames * stride * fps / 30``; convert start/end to pts;
3. seek (backward, keyframes only) to ``start_pts - 1024`` and decode, keeping every frame with
   ``start_pts <= pts <= end_pts`` plus the first one past it;
4. convert *every* kept frame to a full-size RGB array (``to_rgb().to_ndarray()``) and stack;
5. pick ``linspace(0, clip_size - 1, num_frames)`` of them; float, ``/255``, ``-mean``, ``/std``;
   permute to ``[C, T, H, W]``;
6. short-side jitter by ``F.interpolate`` (bilinear) on the full-size float clip, random crop
   (offset drawn with numpy's exclusive upper bound), flip with probability 0.5.

Their global ``random``/``numpy`` draws are replaced by explicit generators passed in.
"""

from __future__ import annotations

import math
import os
import random

import av
import numpy as np
import torch
import torch.nn.functional as F

from cpd.video.decode import DecodeStats


def official_clip(
    path: str | os.PathLike,
    rng: random.Random,
    nprng: np.random.Generator,
    num_frames: int = 8,
    stride: int = 4,
    crop_size: int = 112,
    scale_range: tuple[int, int] = (128, 170),
    stats: DecodeStats | None = None,
) -> torch.Tensor:
    """One training clip ``[3, T, S, S]`` the way the official loader makes it (see above)."""
    stats = stats if stats is not None else DecodeStats()
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        fps = float(stream.average_rate)
        length, duration = stream.frames, stream.duration
        clip_size = num_frames * stride / 30 * fps
        if duration is None or length == 0:
            start_pts, end_pts = 0, math.inf
        else:
            start_idx = rng.uniform(0, max(length - clip_size, 0))
            end_idx = start_idx + clip_size - 1
            per_frame = duration / length
            start_pts, end_pts = int(start_idx * per_frame), int(end_idx * per_frame)
        container.seek(max(start_pts - 1024, 0), any_frame=False, backward=True, stream=stream)
        kept = {}
        for frame in container.decode(stream):
            stats.frames_decoded += 1
            if frame.pts < start_pts:
                continue
            kept[frame.pts] = frame
            if frame.pts > end_pts:
                break
        frames = [kept[p].to_rgb().to_ndarray() for p in sorted(kept)]
    stats.frames_converted += len(frames)
    video = torch.as_tensor(np.stack(frames))
    index = torch.linspace(0, clip_size - 1, num_frames).clamp(0, video.shape[0] - 1).long()
    video = torch.index_select(video, 0, index).float()
    video = (video / 255.0 - torch.tensor([0.45] * 3)) / torch.tensor([0.225] * 3)
    video = video.permute(3, 0, 1, 2)
    size = int(round(nprng.uniform(*scale_range)))
    height, width = video.shape[2], video.shape[3]
    if width < height:
        new = (int(math.floor(height / width * size)), size)
    else:
        new = (size, int(math.floor(width / height * size)))
    video = F.interpolate(video, size=new, mode="bilinear", align_corners=False)
    y = int(nprng.integers(0, video.shape[2] - crop_size)) if video.shape[2] > crop_size else 0
    x = int(nprng.integers(0, video.shape[3] - crop_size)) if video.shape[3] > crop_size else 0
    video = video[:, :, y : y + crop_size, x : x + crop_size]
    if nprng.uniform() < 0.5:
        video = video.flip(-1)
    return video
