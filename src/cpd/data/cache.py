"""``FrameCache``: decode each video once, keep its uint8 frames in memory, serve clips from them.

For datasets that fit in memory (the synthetic set, UCF101 / HMDB51 at small sizes) decoding
dominates data loading. The cache decodes every frame of a video once, at a configured short
side (e.g. the top of the scale-jitter range, 170 for 112 crops, so that every jittered scale
is a down-scale), and then serves clips through the same steps as :func:`cpd.video.load_clip`:
the same window sampling at the 30 fps target rate, the same draws from the same generator in
the same order (window, scale, crop, flip), the same crop / flip / normalise code. Only the
resize differs: load_clip resizes inside swscale while decoding; the cache resizes the cached
frames with torch (bilinear, antialiased). When no resize is needed — the cache holds frames at
the size the clip needs — a cached clip equals load_clip's exactly, given the same
``interpolation`` for the cache's decode (tested); otherwise the pixels differ by resampling
only (a few grey levels; tested).

Geometry follows the *native* size: the clip's resized size is computed from the video's
native height and width as displayed (square pixels by the sample aspect ratio, turned upright
by the display matrix), as load_clip does, not from the cached size, so crop positions (drawn
from the resized size) match load_clip's draw for draw.

Videos are files or :class:`cpd.video.VideoBytes` (in memory, e.g. from a shard), keyed by
path or by name: a ``VideoBytes`` is decoded once per name, like a path once per path.

Use it as a dataset's loader: ``ActionDataset(..., loader=cache, multiview_loader=
cache.load_clips)`` or ``VideoCaptionDataset(..., loader=cache)``; both methods take the
arguments of :func:`cpd.video.load_clip` / :func:`cpd.video.load_clips`.

Memory: :attr:`FrameCache.nbytes` is the bytes of cached frames; a video that would take the
cache past ``max_bytes`` raises :class:`CacheBudgetError` before its frames are decoded (only
the first is, to learn the size it is shown at).

Failures: a video that cannot be decoded raises :class:`cpd.errors.VideoDecodeError` (so the
dataset's failure policy applies), and the failure is remembered: later requests raise the same
error without decoding again.

DataLoader workers: each worker process holds its own copy of the dataset and hence of the
cache. Videos decoded lazily inside a worker stay in that worker (W workers -> up to W copies,
and they are lost when non-persistent workers end with the epoch). Call :meth:`FrameCache.fill`
in the main process *before* creating the DataLoader: forked workers then share the filled
frames copy-on-write (the arrays are never written, so their pages stay shared). With the
``spawn`` start method the cache would be pickled into every worker; use ``fork`` (the Linux
default) or ``num_workers=0`` — serving a clip from memory costs a few milliseconds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cpd.errors import CPDError, VideoDecodeError
from cpd.video import sampling, transforms
from cpd.video.clip import plan_clip
from cpd.video.decode import (
    INTERPOLATION,
    DecodeStats,
    VideoBytes,
    VideoSlice,
    VideoSource,
    display_size,
    open_video,
    probe,
    source_name,
)

__all__ = ["CacheBudgetError", "CachedVideo", "FrameCache"]

DEFAULT_MAX_BYTES = 8 * 2**30


class CacheBudgetError(CPDError):
    """Caching a video would exceed the frame cache's memory budget."""


@dataclass(frozen=True)
class CachedVideo:
    """One cached video: every frame as uint8 ``[N, h, w, 3]``, plus native metadata."""

    frames: np.ndarray
    fps: float
    height: int  # native size as displayed, which clip geometry is computed from
    width: int

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def _resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[T, h, w, 3]`` -> uint8 ``[T, H, W, 3]``, bilinear with antialiasing."""
    if tuple(frames.shape[1:3]) == size:
        return frames
    # [T, h, w, 3] permuted to NCHW is a channels-last tensor, which torch resizes in uint8
    # directly (no float copy; about 3x faster than the float path)
    x = F.interpolate(
        frames.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False, antialias=True
    )
    return x.permute(0, 2, 3, 1)


class FrameCache:
    """In-memory uint8 frames of whole videos, served as clips; see the module docstring.

    Args:
        short_side: short side of the cached frames (the displayed aspect ratio is kept).
            ``None`` keeps the native size as displayed; a video smaller than ``short_side`` is
            kept at that size (never up-scaled in memory).
        max_bytes: memory budget for cached frames (default 8 GiB); ``None`` for no limit.
        interpolation: swscale algorithm for the one-time decode resize (``"BILINEAR"``, the
            filtered one, by default; ``"FAST_BILINEAR"`` is what load_clip uses in training).
    """

    def __init__(
        self,
        short_side: int | None = None,
        *,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        interpolation: str = INTERPOLATION,
    ) -> None:
        if short_side is not None and short_side < 1:
            raise ValueError(f"short_side must be positive, got {short_side}")
        self.short_side = short_side
        self.max_bytes = max_bytes
        self.interpolation = interpolation
        self._videos: dict[str, CachedVideo] = {}
        self._failed: dict[str, str] = {}
        self._nbytes = 0
        self._reserved = 0  # bytes promised to decodes in flight (fill's threads)
        self._lock = threading.Lock()

    # -- state ---------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes of cached frames."""
        return self._nbytes

    @property
    def failures(self) -> dict[str, str]:
        """Paths (or in-memory videos' names) that failed to decode, with the reason (a copy)."""
        return dict(self._failed)

    def __len__(self) -> int:
        return len(self._videos)

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, (str, os.PathLike, VideoBytes, VideoSlice)):
            return False
        return source_name(path) in self._videos

    def clear(self) -> None:
        """Drop every cached video and remembered failure."""
        with self._lock:
            self._videos.clear()
            self._failed.clear()
            self._nbytes = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]  # locks do not pickle; a copy gets its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- filling -------------------------------------------------------------------------

    def get(self, path: VideoSource) -> CachedVideo:
        """The cached video at ``path`` (a path or :class:`~cpd.video.VideoBytes`, keyed by its
        name), decoding it first if needed.

        Raises :class:`VideoDecodeError` (also for a remembered failure) and
        :class:`CacheBudgetError`.
        """
        key = source_name(path)
        video = self._videos.get(key)
        if video is not None:
            return video
        reason = self._failed.get(key)
        if reason is not None:
            raise VideoDecodeError(key, reason)
        return self._decode(path)

    def _decode(self, source: VideoSource) -> CachedVideo:
        key = source_name(source)
        try:
            num_frames, fps, _, _ = probe(source)
            # the size as shown (sample aspect ratio, display matrix) needs the first frame
            height, width = display_size(source)
            short = self._cached_short_side(height, width)
            size = (height, width)
            if short is not None:
                size = transforms.short_side_size(height, width, short)
            need = num_frames * size[0] * size[1] * 3
            self._reserve(key, need)
            try:
                with open_video(source) as reader:
                    frames = reader.frames(np.arange(reader.index.num_frames), short_side=short,
                                           interpolation=self.interpolation)  # fmt: skip
                    # native size: what the decoder gave; scaled: the shown aspect ratio
                    height, width = frames.shape[1:3] if short is None else reader.display_size
            finally:
                with self._lock:
                    self._reserved -= need
        except VideoDecodeError as e:
            with self._lock:
                self._failed[key] = e.reason
            raise
        frames.setflags(write=False)  # shared copy-on-write with forked workers: never write
        video = CachedVideo(frames, fps, height, width)
        with self._lock:
            if key not in self._videos:  # two threads may have decoded the same path
                self._videos[key] = video
                self._nbytes += frames.nbytes
            return self._videos[key]

    def _cached_short_side(self, height: int, width: int) -> int | None:
        """The short side to cache frames at; None keeps them at their native size."""
        if self.short_side is None or self.short_side >= min(height, width):
            return None
        return self.short_side

    def _reserve(self, key: str, need: int) -> None:
        with self._lock:
            if self.max_bytes is not None and self._nbytes + self._reserved + need > self.max_bytes:
                raise CacheBudgetError(
                    f"{key}: caching its frames ({need / 2**20:.1f} MiB) would exceed the frame "
                    f"cache budget of {self.max_bytes / 2**20:.1f} MiB "
                    f"({self._nbytes / 2**20:.1f} MiB cached in {len(self._videos)} videos); "
                    "raise max_bytes, lower short_side, or load clips from disk"
                )
            self._reserved += need

    def fill(
        self, paths: Iterable[VideoSource], *, workers: int = 1, progress: bool = True
    ) -> dict[str, float]:
        """Decode ``paths`` (paths or :class:`~cpd.video.VideoBytes`) into the cache now (before
        DataLoader workers fork).

        ``workers`` threads decode in parallel (PyAV releases the GIL while decoding). Videos
        that fail are remembered and counted, not raised; a :class:`CacheBudgetError` stops the
        fill and propagates. Returns ``{"decoded", "already_cached", "failed", "nbytes",
        "seconds"}``.
        """
        from tqdm.auto import tqdm

        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        todo: dict[str, VideoSource] = {}  # by key, first come first kept
        for p in paths:
            todo.setdefault(source_name(p), p)
        fresh = [p for k, p in todo.items() if k not in self._videos and k not in self._failed]
        start, failed = time.perf_counter(), 0
        bar = tqdm(total=len(fresh), desc="caching frames", unit="video", disable=not progress)

        def one(source: VideoSource) -> bool:
            try:
                self._decode(source)
                return True
            except VideoDecodeError:
                return False
            finally:
                bar.update(1)

        try:
            if workers == 1:
                failed = sum(not one(k) for k in fresh)
            else:
                with ThreadPoolExecutor(workers) as pool:
                    futures = [pool.submit(one, k) for k in fresh]
                    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                    for f in pending:
                        f.cancel()
                    for f in futures:
                        if f.done() and not f.cancelled():
                            failed += not f.result()  # re-raises a budget error
        finally:
            bar.close()
        return {
            "decoded": len(fresh) - failed,
            "already_cached": len(todo) - len(fresh),
            "failed": failed,
            "nbytes": self._nbytes,
            "seconds": time.perf_counter() - start,
        }

    # -- serving clips ---------------------------------------------------------------------

    def _frames(self, video: CachedVideo, indices: Sequence[int], short: int) -> torch.Tensor:
        size = transforms.short_side_size(video.height, video.width, short)
        h, w = video.frames.shape[1:3]
        if (size[0] > h or size[1] > w) and (h, w) != (video.height, video.width):
            raise ValueError(
                f"the frame cache holds frames at {h}x{w} (short side {self.short_side}), but a "
                f"clip needs {size[0]}x{size[1]}; build the cache with short_side >= {short}"
            )
        idx = np.asarray(indices, dtype=np.int64)
        return _resize(torch.from_numpy(video.frames[idx]), size)

    def __call__(
        self,
        path: VideoSource,
        num_frames: int = 8,
        stride: int = 4,
        crop_size: int = 112,
        train: bool = True,
        seed: int | None = None,
        *,
        generator: torch.Generator | None = None,
        scale_range: tuple[int, int] | None = None,
        hflip: float = 0.5,
        mean: Sequence[float] = transforms.MEAN,
        std: Sequence[float] = transforms.STD,
        target_fps: float = sampling.TARGET_FPS,
        interpolation: str | None = None,
        stats: DecodeStats | None = None,
    ) -> torch.Tensor:
        """One clip, as :func:`cpd.video.load_clip` makes it, from the cached frames.

        Same arguments, draws and output ``[3, num_frames, crop_size, crop_size]``.
        ``interpolation`` and ``stats`` are accepted for compatibility and unused (the resize
        is torch's; nothing is decoded once the video is cached).
        """
        del interpolation, stats
        video = self.get(path)
        indices, short, g = plan_clip(video.num_frames, video.fps, num_frames, stride, crop_size,
                                      train, seed, generator, scale_range, target_fps)  # fmt: skip
        frames = self._frames(video, indices, short)
        return transforms.crop_flip_normalize(frames, crop_size, g, hflip=hflip, mean=mean, std=std)

    load_clip = __call__

    def load_clips(
        self,
        path: VideoSource,
        num_clips: int = 10,
        num_crops: int = 3,
        num_frames: int = 8,
        stride: int = 4,
        crop_size: int = 112,
        *,
        mean: Sequence[float] = transforms.MEAN,
        std: Sequence[float] = transforms.STD,
        target_fps: float = sampling.TARGET_FPS,
        interpolation: str = INTERPOLATION,
        stats: DecodeStats | None = None,
    ) -> torch.Tensor:
        """The multi-view test clips, as :func:`cpd.video.load_clips` makes them, from the cache:
        ``[num_clips * num_crops, 3, num_frames, crop_size, crop_size]``, clip-major."""
        del interpolation, stats
        video = self.get(path)
        windows = sampling.uniform_windows(
            video.num_frames, num_clips, num_frames, stride, video.fps, target_fps
        )
        flat = [i for window in windows for i in window]
        frames = self._frames(video, flat, crop_size)
        frames = frames.reshape(num_clips, num_frames, *frames.shape[1:])
        views = []
        for c in range(num_clips):
            views.extend(
                transforms.spatial_views(frames[c], crop_size, num_crops, mean=mean, std=std)
            )
        return torch.stack(views)
