"""Transcode one video the paper's way: its middle segment, short side scaled, H.264 mp4.

Timeline. A packet scan (demux only) gives every frame's presentation timestamp; the video
spans from the first frame's pts to the last one's plus one frame duration (the median
spacing). Frames whose pts falls in ``[start, start + seconds)`` are kept, computed in exact
fractions of the stream's time base, so a 30 s clip at 10 fps cut to 2 s keeps frames 140..159.
Kept frames keep their own timestamps (shifted to start at 0), so variable frame rate survives
and the nominal rate (29.97 included) goes into the header. Streams without packet timestamps
are cut by frame count at their nominal rate instead.

Size. Like the official preprocessing, the short side becomes ``short_side`` also when that
means upscaling (the training clips' scale jitter assumes that input size); ``upscale=False``
keeps smaller videos at their size (rounded down to even dimensions). Videos are written as
players and ``ffmpeg`` show them, and their short side is measured so: a video with non-square
pixels (a sample aspect ratio other than 1, e.g. 720x576 at 16:15, shown 768x576) is written
with square pixels at its display aspect ratio, and one whose display matrix shows it turned
(a portrait phone video stored as landscape) is written upright. The output carries neither.

Sources are opened here rather than through :mod:`cpd.video.decode`: a transcoder streams raw
frames with their timestamps into an encoder, which the clip reader (RGB arrays of chosen
frames) does not offer. :mod:`cpd.data.prepare` runs this over many videos.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from statistics import median_low
from typing import Any

from cpd.errors import DataError, VideoDecodeError

__all__ = ["PrepareSettings", "middle_window", "output_size", "transcode"]


@dataclass(frozen=True)
class PrepareSettings:
    """How each video is cut, scaled and encoded (stored in ``results.json``)."""

    seconds: float = 20.0  # length of the middle segment kept; 0 keeps whole videos
    short_side: int = 256
    upscale: bool = True  # the paper resized every video to 256, small ones included
    crf: int = 23
    preset: str = "medium"
    keyframe_seconds: float = 1.0  # GOP length: short GOPs keep later seeks cheap

    def check(self) -> None:
        """Raise :class:`DataError` for settings no video could be prepared with."""
        if self.seconds < 0:
            raise DataError(f"seconds must be >= 0, got {self.seconds}")
        if self.short_side < 2 or self.short_side % 2:
            raise DataError(f"short side must be even and >= 2 (yuv420p), got {self.short_side}")
        if not 0 <= self.crf <= 51:
            raise DataError(f"crf must be in [0, 51], got {self.crf}")
        if self.keyframe_seconds <= 0:
            raise DataError(f"keyframe interval must be > 0 s, got {self.keyframe_seconds}")


def output_size(width: int, height: int, short_side: int, upscale: bool = True) -> tuple[int, int]:
    """``(width, height)`` with the short side ``short_side`` (or kept when smaller and not
    ``upscale``), aspect ratio kept, both even (yuv420p halves the chroma planes)."""
    short = min(width, height)
    target = short_side if upscale or short > short_side else max(2, short - short % 2)

    def even(x: float) -> int:
        return max(2, 2 * round(x / 2))

    return even(width * target / short), even(height * target / short)


def middle_window(pts: Sequence[int], time_base: Fraction, seconds: float) -> tuple | None:
    """``[start, end)`` in pts units (fractions) of the middle ``seconds``; ``None``: keep all.

    A video spans from its first frame to its last plus one frame duration (the median
    spacing of the sorted pts); a video no longer than ``seconds`` is kept whole.
    """
    if seconds <= 0 or len(pts) < 2:
        return None
    span = _span(pts)
    want = Fraction(str(seconds)) / time_base
    if span <= want:
        return None
    start = pts[0] + (span - want) / 2
    return start, start + want


def _span(pts: Sequence[int]) -> int:
    """First to last timestamp plus one frame duration (the median spacing), in pts units."""
    if len(pts) < 2:
        return 1
    return pts[-1] - pts[0] + median_low(b - a for a, b in zip(pts, pts[1:], strict=False))


def _open_source(path: str) -> Any:
    import av

    if not os.path.isfile(path):
        raise VideoDecodeError(path, "no such file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file")
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise VideoDecodeError(path, f"cannot open: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream")
    container.streams.video[0].codec_context.thread_count = 1  # the pool uses every core
    return container


def _scan(path: str) -> tuple[list[int], Fraction, bool]:
    """Sorted frame timestamps and their time base from a packet scan (no decoding).

    Without usable packet pts (missing or repeated), frames are counted by a full decode and
    numbered ``0..n-1`` in units of the nominal frame period; the flag says which happened.
    """
    import av

    with _open_source(path) as container:
        stream = container.streams.video[0]
        pts: list[int] | None = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                if packet.pts is None:
                    pts = None
                    break
                pts.append(packet.pts)
        except av.FFmpegError:
            pass  # a truncated file: the frames read so far are the video
        if pts is not None and pts and len(set(pts)) == len(pts) and stream.time_base:
            return sorted(pts), Fraction(stream.time_base), True
        rate = stream.average_rate or stream.guessed_rate or Fraction(30)
    with _open_source(path) as container:
        count = 0
        try:
            for _ in container.decode(video=0):
                count += 1
        except av.FFmpegError:
            pass
    if count == 0:
        raise VideoDecodeError(path, "no frame could be decoded")
    return list(range(count)), 1 / Fraction(rate), False


class _SeekMissed(Exception):
    """A seek landed after the first wanted frame (internal signal: decode from the start)."""


def _kept_frames(plan: _Plan, seek: bool) -> Iterable[tuple[Any, int, Any]]:
    """Yield ``(frame, timestamp, source stream)`` of the frames inside the window in
    presentation order."""
    import av

    path, window, first, by_pts = plan.source, plan.window, plan.first, plan.by_pts
    with _open_source(path) as container:
        stream = container.streams.video[0]
        if seek:
            container.seek(first, backward=True, any_frame=False, stream=stream)
        started = False
        try:
            for number, frame in enumerate(container.decode(stream)):
                ts = frame.pts if by_pts else number
                if ts is None:
                    raise VideoDecodeError(path, f"decoded frame {number} has no timestamp")
                if window is not None and ts < window[0]:
                    continue
                if window is not None and ts >= window[1]:
                    break
                if not started and seek and ts > first:
                    raise _SeekMissed
                started = True
                yield frame, ts, stream
        except av.FFmpegError as exc:
            raise VideoDecodeError(path, f"decoding failed: {exc}") from exc


@dataclass(frozen=True)
class _Plan:
    """What :func:`transcode` decided before decoding: which frames and their clock."""

    source: str
    window: tuple | None  # [start, end) in the source's timestamp units; None keeps all
    first: int  # timestamp of the first kept frame (output time 0)
    by_pts: bool  # timestamps are packet pts (else frame numbers)
    time_base: Fraction
    rate: Fraction


def transcode(source: str | Path, dest: str | Path, settings: PrepareSettings) -> dict[str, Any]:
    """Write the middle segment of ``source``, resized and H.264-encoded, to ``dest`` (mp4).

    Returns ``{"frames", "width", "height", "fps", "seconds", "source_seconds"}``. Raises
    :class:`VideoDecodeError` for sources that cannot give a single frame.
    """
    source = os.fspath(source)
    pts, time_base, by_pts = _scan(source)
    window = middle_window(pts, time_base, settings.seconds)
    kept = [p for p in pts if window is None or window[0] <= p < window[1]]
    with _open_source(source) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
    if len(kept) > 1:
        # the header's rate unless the timestamps say otherwise (variable frame rate, none)
        measured = Fraction(len(kept) - 1) / ((kept[-1] - kept[0]) * time_base)
        if not rate or not by_pts or abs(rate / measured - 1) > 0.005:
            rate = measured
    rate = Fraction(rate or 30).limit_denominator(1001)
    plan = _Plan(source, window, kept[0], by_pts, time_base, rate)
    try:
        # seek only when the segment starts after the first frame; a late landing is detected
        frames, size = _encode(plan, dest, settings, seek=by_pts and kept[0] > pts[0])
    except _SeekMissed:
        frames, size = _encode(plan, dest, settings, seek=False)
    if frames == 0:
        raise VideoDecodeError(source, "no frame of the middle segment could be decoded")
    return {
        "frames": frames,
        "width": size[0],
        "height": size[1],
        "fps": round(float(rate), 4),
        "seconds": round(float(_span(kept) * time_base), 3),
        "source_seconds": round(float(_span(pts) * time_base), 3),
    }


def _encode(plan: _Plan, dest: str | Path, settings: PrepareSettings, seek: bool) -> tuple:
    """Decode the kept frames of the source and encode them, upright, into ``dest``.

    Returns ``(frames written, (width, height))``. The size is fixed at the first frame: only
    a decoded frame tells whether a display matrix shows the video turned (phone videos) and,
    for a sample aspect ratio that only the codec carries, how wide its pixels are shown. The
    resize makes the pixels square and such frames are turned upright here, so the output
    needs neither an aspect ratio nor a matrix.
    """
    import av
    from av.video.reformatter import VideoReformatter

    from cpd.video.decode import UPRIGHT, orientation, sample_aspect_ratio, shown_size

    scaler = VideoReformatter()  # keeps its swscale context from frame to frame
    count, last, size, turn = 0, None, (0, 0), UPRIGHT
    with contextlib.ExitStack() as stack:
        out = stream = None
        for frame, ts, source in _kept_frames(plan, seek):
            if last is not None and ts <= last:
                continue  # a repeated timestamp: the muxer needs strictly increasing ones
            if stream is None:  # the first frame fixes turn and pixel shape, as in decode
                turn = orientation(frame)
                shown_h, shown_w = shown_size(
                    frame.width, frame.height, sample_aspect_ratio(source), turn
                )
                size = output_size(shown_w, shown_h, settings.short_side, settings.upscale)
                out = stack.enter_context(av.open(os.fspath(dest), mode="w", format="mp4"))
                stream = _output_stream(out, plan, settings, size)
            width, height = (size[1], size[0]) if turn[0] else size
            image = scaler.reformat(frame, width=width, height=height, format="yuv420p",
                                    interpolation="BICUBIC", threads=1)  # fmt: skip
            if turn != UPRIGHT:
                image = _turn_yuv420p(image, turn)
            image.pts, image.time_base = int(ts - plan.first), plan.time_base
            for packet in stream.encode(image):
                out.mux(packet)
            count, last = count + 1, ts
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)
    return count, size


def _turn_yuv420p(image: Any, turn: tuple[bool, bool, bool]) -> Any:
    """A yuv420p frame turned plane by plane: no trip through RGB, so no colour conversion."""
    import av
    import numpy as np

    from cpd.video.decode import apply_orientation

    packed = image.to_ndarray()  # [h * 3 / 2, w]: the Y plane, then U and V of h/2 x w/2 each
    h, w = image.height, image.width
    planes = (packed[:h], packed[h : h + h // 4].reshape(h // 2, w // 2),
              packed[h + h // 4 :].reshape(h // 2, w // 2))  # fmt: skip
    turned = [apply_orientation(p[..., None], turn)[..., 0] for p in planes]
    out_w = turned[0].shape[1]
    packed = np.concatenate([p.reshape(-1) for p in turned]).reshape(-1, out_w)
    return av.VideoFrame.from_ndarray(packed, format="yuv420p")


def _output_stream(out: Any, plan: _Plan, settings: PrepareSettings, size: tuple) -> Any:
    """The H.264 stream of ``out``: ``size`` (width, height), the source's clock, one GOP a
    ``keyframe_seconds``."""
    stream = out.add_stream("libx264", rate=plan.rate)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    # frames keep the source's timestamps (variable frame rate survives)
    stream.time_base = stream.codec_context.time_base = plan.time_base
    stream.codec_context.thread_count = 1  # one process per core already; deterministic
    gop = max(1, round(float(plan.rate) * settings.keyframe_seconds))
    stream.options = {"crf": str(settings.crf), "preset": settings.preset, "g": str(gop)}
    return stream
