"""Video decoding with PyAV: the only module of ``cpd`` that opens video files.

Sources. Every function here takes a path, a :class:`VideoBytes` (a video already in memory,
e.g. one sample of a shard streamed from remote storage) or a :class:`VideoSlice` (a video
stored inside a local file, e.g. a member of a tar shard on disk, read in place), and treats
them alike: the same index, the same seeks, the same frames; errors name the path or the
video's name (see :mod:`cpd.video.sources`).

Frame identity. "Frame ``i``" is the i-th frame in presentation order of a full sequential
decode. Container headers often lack or misstate the frame count (``stream.frames`` is 0 for
.webm/.mkv and wrong for some .avi/.mp4), so we never use it. Instead :func:`video_index` does
one cheap packet-level scan (demux only, no decoding) and records every frame's presentation
timestamp (pts), sorted, plus the keyframes. Index ``i`` <-> ``pts[i]`` then holds for any
frame rate, variable ones included. The index is cached in-process per (path, size, mtime).
If packets carry no usable pts (missing or duplicated), or a decode ever disagrees with the
index, we fall back to counting frames in a full sequential decode, which is the definition.
In-memory videos are cached per (name, length, CRC-32 of the data): the checksum costs about
0.1 ms per 500 kB, a fraction of a percent of a clip; slices per (path, offset, size) and the
file's (size, inode, mtime).

Selective decoding. For the wanted frames we seek to the keyframe before each group of them
and decode until the last wanted frame's packet is in, then drain the decoder (rather than feed
it more packets only to push frames out of its reordering delay). Packets whose frame is not
wanted are decoded with ``skip_frame = "NONREF"``: FFmpeg then drops them if no other frame
references them, which is safe (nothing needs a non-reference frame) and saves a large share of
the work on B-frame streams. Frames are identified by their pts, so a seek that lands early
costs time but not correctness, and one that would miss a frame is detected and falls back.
Only wanted frames are converted to RGB, and they are resized during that conversion (swscale),
never as float tensors. One clip costs one ``av.open`` (:class:`VideoReader`), opened without
FFmpeg's stream probing where the container allows (see :func:`_open_fast`).

Display geometry. Frames come out as players show them: pixels made square by the sample
aspect ratio (see :func:`sample_aspect_ratio`), then turned by the display matrix (see
:func:`orientation`). Both are read when a call's first frame is converted.

Decoding is single-threaded (``thread_count = 1``, scaling with ``threads=1``): frame threading
returns frames late, which breaks the per-packet ``skip_frame`` switch, and threaded decoding
as configured by the official code hangs with PyAV 18. Every container is closed by ``with``.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from cpd.errors import VideoDecodeError
from cpd.video.sources import (
    Source,
    VideoBytes,
    VideoSlice,
    VideoSource,
    as_source,
    content_key,
    source_name,
)
from cpd.video.transforms import short_side_size

INTERPOLATION = "BILINEAR"
_CACHE_SIZE = 4096


@dataclass(frozen=True)
class VideoIndex:
    """What a packet scan tells about a video's frames; see the module docstring."""

    pts: np.ndarray  # int64 [n]: pts of frame i; arange(n) when not seekable
    keyframes: np.ndarray  # int64 [k]: frame index of each keyframe, ascending
    seek_ts: np.ndarray  # int64 [k]: timestamp to seek to for that keyframe (_seek_targets)
    fps: float
    width: int  # as stored; shown stretched by a SAR and turned by a matrix (see shown_size)
    height: int
    seekable: bool  # False: pts unusable, frames are found by counting a sequential decode

    @property
    def num_frames(self) -> int:
        return int(self.pts.shape[0])


@dataclass
class DecodeStats:
    """Counters that callers (the benchmark) may pass in to see the work done."""

    # frames the decoder output; runs end by draining the decoder, so this counts every frame
    # decoded, and no frame skipped as non-reference
    frames_decoded: int = 0
    frames_converted: int = 0
    seeks: int = 0
    fallbacks: int = 0  # times a decode disagreed with the index and we decoded sequentially


class _Mismatch(Exception):
    """A selective decode did not return the frames the index promised (internal signal)."""


_index_cache: OrderedDict[tuple, VideoIndex] = OrderedDict()


def clear_index_cache() -> None:
    """Forget every cached packet scan (e.g. after rewriting files in place)."""
    _index_cache.clear()


def forget_index(source: VideoSource) -> None:
    """Forget the cached packet scan of ``source`` only (the benchmark's cold loaders use it,
    so that they leave other loaders' entries cached)."""
    with suppress(OSError):  # a file gone: nothing is cached under its current (size, mtime)
        _index_cache.pop(content_key(as_source(source)), None)


@contextmanager
def _open(source: VideoSource) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """Open ``source`` and yield (container, first video stream); FFmpeg errors become ours."""
    source = as_source(source)
    name = source_name(source)
    if isinstance(source, VideoBytes):
        if not source.data:
            raise VideoDecodeError(name, "empty data (0 bytes)")
        data = source.data

        def target() -> str | io.BytesIO:
            return io.BytesIO(data)  # a fresh reader per open; it shares the bytes, no copy

    else:
        if isinstance(source, VideoSlice):
            if not os.path.isfile(source.path):
                raise VideoDecodeError(name, f"no such file: {source.path}")
            if source.size == 0:
                raise VideoDecodeError(name, "empty data (0 bytes)")
            url = source.url()
        else:
            if not os.path.isfile(source):
                raise VideoDecodeError(name, "no such file")
            if os.path.getsize(source) == 0:
                raise VideoDecodeError(name, "empty file")
            url = source

        def target() -> str | io.BytesIO:
            return url

    container = _open_fast(target())
    if container is None:
        try:
            container = av.open(target(), metadata_errors="ignore")
        except av.FFmpegError as e:
            # FFmpeg's message names the file; an in-memory video's it calls '<none>', and a
            # slice's by its subfile URL
            named = isinstance(source, VideoBytes | VideoSlice)
            detail = e.strerror if named and e.strerror else e
            raise VideoDecodeError(name, f"cannot open: {detail}") from e
    with container:
        if not container.streams.video:
            raise VideoDecodeError(name, "no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        yield container, stream


def _open_fast(target: str | io.BytesIO) -> av.container.InputContainer | None:
    """Open without FFmpeg's stream probing, or return None where that loses information.

    ``av.open`` runs ``avformat_find_stream_info``, which reads ahead and decodes the first
    frames (an H.264 keyframe at least) to fill in codec parameters we do not need: 3 of the
    4 ms an open of a 640x272 mp4 costs. Containers that declare their streams in the header
    (mp4, mkv, webm, avi) give stream, size and time base without it; anything else (no video
    stream or no size found this way) is reopened the normal way by the caller. Works alike
    for a file-like ``target``: the format is still detected from the data (``probesize``
    limits the stream probing only, not the format detection).
    """
    try:
        container = av.open(
            target,
            metadata_errors="ignore",
            options={"skip_frame": "all"},
            container_options={"analyzeduration": "0", "probesize": "32"},
        )
    except av.FFmpegError:
        return None
    video = container.streams.video
    if video and video[0].codec_context.width > 0 and video[0].codec_context.height > 0:
        return container
    container.close()
    return None


def _fps_of(pts: np.ndarray, stream: av.VideoStream) -> float:
    """Average frame rate from the frame timestamps; header rates only when that is impossible."""
    if pts.shape[0] >= 2 and stream.time_base is not None and pts[-1] > pts[0]:
        return float((pts.shape[0] - 1) / ((pts[-1] - pts[0]) * stream.time_base))
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 30.0


def _seek_targets(key_pts: np.ndarray, key_dts: np.ndarray, last_pts: int) -> np.ndarray:
    """Timestamp to seek to for each keyframe, so that a backward seek lands on it.

    Demuxers index keyframes by dts (avi), pts (mkv, webm) or dts plus a shift (mp4). We seek
    to just before the next keyframe's dts: every index timestamp of this keyframe is at or
    below that and every one of the next keyframe above it. Where the next keyframe's dts is
    not after this one's pts (GOPs shorter than the B-frame delay) we seek to this one's dts,
    which may land a keyframe earlier (more decoding) but never later.
    """
    targets = np.empty_like(key_pts)
    if key_pts.size:
        targets[-1] = max(last_pts, int(key_pts[-1]))
        nxt = key_dts[1:] - 1
        targets[:-1] = np.where(nxt >= key_pts[:-1], nxt, key_dts[:-1])
    return targets


def _scan(
    source: Source, container: av.container.InputContainer, stream: av.VideoStream
) -> VideoIndex:
    """Index by demuxing every packet of the stream (no decoding); leaves the container at EOF."""
    pts, key_pts, key_dts = [], [], []
    usable = True
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:  # flush packets; edit-list cut frames
                continue
            if packet.pts is None:
                usable = False
                break
            pts.append(packet.pts)
            if packet.is_keyframe:
                key_pts.append(packet.pts)
                key_dts.append(packet.pts if packet.dts is None else min(packet.pts, packet.dts))
    except av.FFmpegError:
        pass  # a truncated file ends early; what was read is still usable
    pts_arr = np.sort(np.asarray(pts, dtype=np.int64))
    if usable and pts_arr.size and np.unique(pts_arr).size == pts_arr.size:
        order = np.argsort(np.asarray(key_pts, dtype=np.int64), kind="stable")
        kpts = np.asarray(key_pts, dtype=np.int64)[order]
        kdts = np.asarray(key_dts, dtype=np.int64)[order]
        return VideoIndex(
            pts=pts_arr,
            keyframes=np.searchsorted(pts_arr, kpts).astype(np.int64),
            seek_ts=_seek_targets(kpts, kdts, int(pts_arr[-1])),
            fps=_fps_of(pts_arr, stream),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            seekable=True,
        )
    if usable:
        raise VideoDecodeError(source_name(source), "video stream has no frames")
    return _scan_sequential(source)


def _scan_sequential(source: VideoSource) -> VideoIndex:
    """Index by decoding everything (slow, only when packet timestamps are unusable)."""
    count, frame_pts = 0, []
    with _open(source) as (container, stream):
        try:
            for frame in container.decode(stream):
                count += 1
                frame_pts.append(frame.pts)
                width, height = frame.width, frame.height
        except av.FFmpegError:
            pass
        if count == 0:
            raise VideoDecodeError(source_name(source), "no frame could be decoded")
        known = [p for p in frame_pts if p is not None]
        fps = _fps_of(np.asarray(sorted(known), dtype=np.int64), stream) if known else 30.0
    empty = np.zeros(0, dtype=np.int64)
    return VideoIndex(np.arange(count, dtype=np.int64), empty, empty, fps, width, height, False)


def video_index(source: VideoSource) -> VideoIndex:
    """The (cached) frame index of ``source`` (a path, :class:`VideoBytes` or
    :class:`VideoSlice`); raises :class:`VideoDecodeError` for bad videos."""
    source = as_source(source)
    key = _key(source)
    index = _index_cache.get(key)
    if index is None:
        with _open(source) as (container, stream):
            index = _store(key, _scan(source, container, stream))
    else:
        _index_cache.move_to_end(key)
    return index


def _key(source: Source) -> tuple:
    try:
        return content_key(source)
    except OSError as e:
        raise VideoDecodeError(source_name(source), "no such file") from e


def _store(key: tuple, index: VideoIndex) -> VideoIndex:
    _index_cache[key] = index
    while len(_index_cache) > _CACHE_SIZE:
        _index_cache.popitem(last=False)
    return index


def _cached(source: VideoSource) -> VideoIndex | None:
    """The cached index of ``source``, or None."""
    key = _key(as_source(source))
    index = _index_cache.get(key)
    if index is not None:
        _index_cache.move_to_end(key)
    return index


def _remember(source: VideoSource, index: VideoIndex) -> VideoIndex:
    """Cache ``index`` as that of ``source``; returns it."""
    return _store(_key(as_source(source)), index)


def probe(source: VideoSource) -> tuple[int, float, int, int]:
    """``(num_frames, fps, width, height)`` of ``source`` from a packet scan (no decoding); the
    size as stored, before a sample aspect ratio stretches it or a display matrix turns it
    (see :func:`sample_aspect_ratio`, :func:`orientation`)."""
    index = video_index(source)
    return index.num_frames, index.fps, index.width, index.height


# How to show a frame upright: (transpose, flip rows, flip columns), applied in that order.
Orientation = tuple[bool, bool, bool]
UPRIGHT: Orientation = (False, False, False)


def orientation(frame: av.VideoFrame) -> Orientation:
    """How ``frame`` must be turned to be shown as its display matrix says (phone videos).

    The matrix (ISO/IEC 14496-12, FFmpeg's ``DISPLAYMATRIX`` side data) maps a source pixel
    ``(p, q)`` (column, row) to ``(a·p + c·q, b·p + d·q)`` plus a shift. Rotations by quarter
    turns and mirrorings are exact; any other angle snaps to the nearest quarter turn. Frames
    without a matrix are upright. Players and ``ffmpeg`` apply the matrix too, so a portrait
    phone video stored as landscape comes out portrait here as it does there.
    """
    side = frame.side_data.get("DISPLAYMATRIX")
    if side is None:
        return UPRIGHT
    m = np.frombuffer(bytes(side), dtype=np.int32, count=9).astype(np.float64) / 65536.0
    a, b, c, d = m[0], m[1], m[3], m[4]
    if abs(a) + abs(d) >= abs(b) + abs(c):
        return (False, bool(d < 0), bool(a < 0))
    # axes swap: the output row is the source column (q' = b·p), the output column the row
    return (True, bool(b < 0), bool(c < 0))


def apply_orientation(image: np.ndarray, turn: Orientation) -> np.ndarray:
    """``image`` ``[H, W, C]`` turned by ``turn`` (see :func:`orientation`), contiguous."""
    if turn == UPRIGHT:
        return image
    transpose, flip_rows, flip_cols = turn
    if transpose:
        image = image.transpose(1, 0, 2)
    if flip_rows:
        image = image[::-1]
    if flip_cols:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


# Sample aspect ratios outside [1/16, 16] are broken metadata, not pixels: the widest in use
# are 2:1 (anamorphic) and 1:2, and honouring 1000:1 would make frames of absurd width
_SAR_LIMIT = 16


def sample_aspect_ratio(stream: av.VideoStream) -> Fraction:
    """The shape of ``stream``'s pixels as shown: a pixel's width over its height (SAR).

    Web video often has non-square pixels: 720x576 PAL at 16:15 is shown 768x576, anamorphic
    1440x1080 at 4:3 is shown 1920x1080. Two places may say so: the container (mp4 ``pasp``
    box or a ``tkhd`` size that differs from the coded one, mkv display size) and the codec
    (the H.264/HEVC VUI, MPEG-2/4 headers). As FFmpeg's ``av_guess_sample_aspect_ratio``
    (ffplay and ffmpeg) does, the container's value wins when it has one, else the codec's.
    The container's value is in the header; the codec's is, for a container opened without
    stream probing (:func:`_open_fast`), known only once the decoder has decoded a frame.
    So, like the display matrix, it is read when the first frame of a decode call is
    converted, and that fixes it for the call. Unset, non-positive and absurd values (beyond
    16:1 either way) count as 1: square pixels, frames shown as stored.
    """
    for sar in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if sar is not None and sar > 0:
            sar = Fraction(sar)
            return sar if Fraction(1, _SAR_LIMIT) <= sar <= _SAR_LIMIT else Fraction(1)
    return Fraction(1)


def shown_size(width: int, height: int, sar: Fraction, turn: Orientation) -> tuple[int, int]:
    """``(height, width)`` as a player shows a ``width`` x ``height`` stored frame: the width
    stretched by the sample aspect ratio ``sar`` (rounded), then transposed if ``turn`` turns
    the frame sideways. A SAR of 1 leaves the stored size."""
    if sar != 1:
        width = max(1, int(width * sar + Fraction(1, 2)))
    return (width, height) if turn[0] else (height, width)


class _Converter:
    """Turns decoded frames into upright uint8 RGB arrays of one size, resizing in swscale.

    The output size is ``size`` (height, width) as displayed, or the displayed size scaled to
    short side ``short_side``, or the displayed size; the displayed size is the stored one with
    square pixels (see :func:`sample_aspect_ratio`) and turned upright (:func:`orientation`).
    The stretch to square pixels is part of the one swscale resize. A frame stored sideways is
    resized to the transposed size, then turned upright (a copy of the small, resized image).
    The first frame converted fixes the turn, the sample aspect ratio and the output size for
    every later one, so that one call's frames always stack: a container's matrix is the same
    on every frame, but a codec's orientation message may tag only some of them, and a stream
    may change resolution (or its VUI its aspect ratio).
    """

    def __init__(
        self, size: tuple[int, int] | None, interpolation: str, short_side: int | None = None
    ) -> None:
        if size is not None and short_side is not None:
            raise ValueError("give the output size or its short side, not both")
        self.size = size
        self.short_side = short_side
        self.interpolation = interpolation
        self.reformatter = VideoReformatter()  # keeps its swscale context between frames
        self.turn: Orientation | None = None  # fixed by the first frame converted
        self.sar: Fraction | None = None  # likewise

    def __call__(self, frame: av.VideoFrame, stream: av.VideoStream) -> np.ndarray:
        """``frame`` (just decoded from ``stream``) as upright RGB ``[H, W, 3]``."""
        if self.turn is None:
            self.turn = orientation(frame)
            self.sar = sample_aspect_ratio(stream)
            shown = shown_size(frame.width, frame.height, self.sar, self.turn)
            if self.size is None:
                short = self.short_side
                self.size = shown if short is None else short_side_size(*shown, short)
        turn, size = self.turn, self.size
        assert size is not None
        height, width = (size[1], size[0]) if turn[0] else size
        rgb = self.reformatter.reformat(
            frame,
            width=width,
            height=height,
            format="rgb24",
            interpolation=self.interpolation,
            threads=1,
        )
        return apply_orientation(rgb.to_ndarray(), turn)


def _plan_runs(index: VideoIndex, wanted: np.ndarray) -> list[tuple[int, list[int]]]:
    """Group ascending wanted frames into (keyframe slot or -1, frames) decode runs.

    A new run (a seek) starts when a keyframe lies at least two frames after the previous
    wanted frame and at or before the next one: decoding from that keyframe skips frames that
    decoding on would go through. Every run after the first seeks, so no run relies on frames
    the decoder still buffers from the one before.
    """
    runs: list[tuple[int, list[int]]] = []
    slots = np.searchsorted(index.keyframes, wanted, side="right") - 1
    for i, slot in zip(wanted.tolist(), slots.tolist(), strict=True):
        if runs and (slot < 0 or index.keyframes[slot] <= runs[-1][1][-1] + 1):
            runs[-1][1].append(i)
        else:
            runs.append((slot, [i]))
    return runs


def _decode_seeking(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    index: VideoIndex,
    wanted: np.ndarray,
    convert: _Converter | None,
    skip_nonref: bool,
    fresh: bool,
    stats: DecodeStats,
) -> dict[int, np.ndarray | None]:
    codec = stream.codec_context
    out: dict[int, np.ndarray | None] = {}
    for run_no, (slot, frames) in enumerate(_plan_runs(index, wanted)):
        # a fresh container starts at the file's beginning: no seek needed before keyframe 0
        if slot < 0 and not (run_no == 0 and fresh):
            raise _Mismatch("frames before the first keyframe need a decode from the start")
        if not (run_no == 0 and fresh and slot <= 0):
            container.seek(int(index.seek_ts[slot]), backward=True, any_frame=False, stream=stream)
            stats.seeks += 1
        need = {int(index.pts[i]): i for i in frames}
        last_pts = max(need)
        unsent = len(need)
        mode = ""
        packets = container.demux(stream)
        try:
            for packet in packets:
                if packet.pts in need:
                    unsent -= 1
                if skip_nonref:
                    new_mode = "DEFAULT" if packet.pts is None or packet.pts in need else "NONREF"
                    if new_mode != mode:
                        codec.skip_frame = mode = new_mode
                done = False
                decoded = codec.decode(packet)
                if unsent == 0 and packet.size:
                    # every wanted frame is in the decoder: drain it rather than feed more
                    # packets just to push frames out of its reordering delay
                    decoded += codec.decode(None)
                for frame in decoded:
                    stats.frames_decoded += 1
                    if frame.pts is None:
                        raise _Mismatch("decoded frame without pts")
                    i = need.get(frame.pts)
                    if i is not None and i not in out:
                        out[i] = convert(frame, stream) if convert is not None else None
                    if frame.pts >= last_pts:
                        done = True
                if done:
                    break
        finally:
            packets.close()
            codec.skip_frame = "DEFAULT"
        if any(i not in out for i in frames):
            raise _Mismatch("a seek did not return every wanted frame")
    return out


def _decode_sequential(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    wanted: np.ndarray,
    convert: _Converter | None,
    stats: DecodeStats,
) -> tuple[dict[int, np.ndarray | None], int]:
    """Decode from the start, counting frames; returns (frames by index, frames counted)."""
    want = set(wanted.tolist())
    last_wanted = int(wanted.max())
    out: dict[int, np.ndarray | None] = {}
    count, last_frame = 0, None
    try:
        for frame in container.decode(stream):
            stats.frames_decoded += 1
            if count in want:
                out[count] = convert(frame, stream) if convert is not None else None
            last_frame = frame
            count += 1
            if count > last_wanted:
                break
    except av.FFmpegError:
        pass  # truncated or damaged tail: keep what decoded
    if count <= last_wanted and last_frame is not None:
        # fewer frames than the index said: the missing ones repeat the last frame (clamp)
        tail = convert(last_frame, stream) if convert is not None else None
        for i in want:
            if i >= count:
                out[i] = tail
    return out, count


class VideoReader:
    """An open video (a file, :class:`VideoBytes` or :class:`VideoSlice`): its frame index and
    selective decoding, on one container.

    Use as a context manager (``with open_video(path) as video: ...``). On an index-cache miss
    the packet scan runs on this same container, so a clip costs one ``av.open``. ``path`` is
    the path, or the in-memory video's name.
    """

    def __init__(self, source: VideoSource) -> None:
        self.source = as_source(source)
        self.path = source_name(self.source)
        self._stack = ExitStack()
        try:
            key = _key(self.source)
            self._container, self._stream = self._stack.enter_context(_open(self.source))
            self._fresh = True  # positioned at the start of the file
            index = _index_cache.get(key)
            if index is None:
                index = _store(key, _scan(self.source, self._container, self._stream))
                self._fresh = False
            else:
                _index_cache.move_to_end(key)
        except BaseException:
            self._stack.close()  # a bad file must not leave its container open
            raise
        self.index = index
        # learnt from the frames: known after a call to frames() (or to display_size)
        self.orientation = UPRIGHT
        self.sample_aspect_ratio = Fraction(1)
        self._shown_known = False

    @property
    def display_size(self) -> tuple[int, int]:
        """``(height, width)`` as shown: the stored size with the width stretched by the sample
        aspect ratio, transposed for a sideways video (see :func:`shown_size`). Both come from a
        decoded frame: unless :meth:`frames` has run, frame 0 is decoded here to learn them."""
        if not self._shown_known:
            self.frames([0], (2, 2))  # the smallest conversion: only the geometry is wanted
        return shown_size(
            self.index.width, self.index.height, self.sample_aspect_ratio, self.orientation
        )

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def frames(
        self,
        indices: Sequence[int] | np.ndarray,
        size: tuple[int, int] | None = None,
        *,
        short_side: int | None = None,
        interpolation: str = INTERPOLATION,
        skip_nonref: bool = True,
        stats: DecodeStats | None = None,
    ) -> np.ndarray:
        """Frames ``indices`` as uint8 RGB ``[len(indices), H, W, 3]``; see :func:`decode_frames`."""
        idx = np.clip(np.asarray(indices, dtype=np.int64).reshape(-1), 0, self.index.num_frames - 1)
        if idx.size == 0:
            raise ValueError("decoding needs at least one frame index")
        wanted, inverse = np.unique(idx, return_inverse=True)
        stats = stats if stats is not None else DecodeStats()
        convert = _Converter(size, interpolation, short_side)
        frames = self._decode(wanted, convert, skip_nonref, stats)
        self.orientation = convert.turn or UPRIGHT
        self.sample_aspect_ratio = convert.sar or Fraction(1)
        self._shown_known = convert.turn is not None
        stats.frames_converted += len(wanted)
        first = frames[int(wanted[0])]
        assert first is not None
        unique = np.empty((len(wanted), *first.shape), dtype=np.uint8)
        for slot, i in enumerate(wanted.tolist()):
            unique[slot] = frames[i]
        return unique[inverse]

    def span(self, first: int, last: int, stats: DecodeStats) -> None:
        """Decode, without converting or skipping, every frame from the keyframe before
        ``first`` through ``last``: the work of a plain seek-and-decode loader."""
        n = self.index.num_frames
        first, last = min(max(first, 0), n - 1), min(max(last, 0), n - 1)
        self._decode(np.arange(first, last + 1, dtype=np.int64), None, False, stats)

    def _decode(
        self,
        wanted: np.ndarray,
        convert: _Converter | None,
        skip_nonref: bool,
        stats: DecodeStats,
    ) -> dict[int, np.ndarray | None]:
        if self.index.seekable:
            try:
                return _decode_seeking(
                    self._container,
                    self._stream,
                    self.index,
                    wanted,
                    convert,
                    skip_nonref,
                    self._fresh,
                    stats,
                )
            except (_Mismatch, av.FFmpegError):
                stats.fallbacks += 1
            finally:
                self._fresh = False
        # the definition of frame identity: count frames of a sequential decode
        with _open(self.source) as (container, stream):
            out, count = _decode_sequential(container, stream, wanted, convert, stats)
        if count == 0:
            raise VideoDecodeError(self.path, "no frame could be decoded")
        if self.index.seekable or count < self.index.num_frames:
            # the packet scan was wrong for this file: count frames by decoding from now on
            self.index = _remember(self.source, _scan_sequential(self.source))
        return out


def open_video(source: VideoSource) -> VideoReader:
    """Open ``source`` (a path, :class:`VideoBytes` or :class:`VideoSlice`) for decoding; raises
    :class:`VideoDecodeError` for bad videos."""
    return VideoReader(source)


def display_size(source: VideoSource) -> tuple[int, int]:
    """``(height, width)`` of ``source``'s frames as players show them (square pixels,
    upright); decodes its first frame, since the codec may be what carries the sample aspect
    ratio or the orientation (see :meth:`VideoReader.display_size`)."""
    with open_video(source) as video:
        return video.display_size


def decode_frames(
    path: VideoSource,
    indices: Sequence[int] | np.ndarray,
    size: tuple[int, int] | None = None,
    *,
    short_side: int | None = None,
    interpolation: str = INTERPOLATION,
    skip_nonref: bool = True,
    stats: DecodeStats | None = None,
) -> np.ndarray:
    """Decode frames ``indices`` of ``path`` (a path, :class:`VideoBytes` or
    :class:`VideoSlice`) as uint8 RGB ``[len(indices), H, W, 3]``.

    Indices are clamped to ``[0, num_frames - 1]`` and may repeat or come in any order; each
    distinct frame is decoded and converted once. Frames come as players show them: square
    pixels (stretched by the sample aspect ratio, see :func:`sample_aspect_ratio`) and upright
    (turned as the display matrix says, see :func:`orientation`). ``size`` is ``(height,
    width)`` of the output as displayed, or ``short_side`` its short side with the displayed
    aspect ratio kept (resized during RGB conversion with swscale ``interpolation``); neither:
    the displayed native size.
    ``skip_nonref=False`` disables the non-reference-frame skipping (for comparisons).
    """
    with open_video(path) as video:
        return video.frames(indices, size, short_side=short_side, interpolation=interpolation,
                            skip_nonref=skip_nonref, stats=stats)  # fmt: skip


def decode_all(
    path: VideoSource,
    size: tuple[int, int] | None = None,
    *,
    short_side: int | None = None,
    interpolation: str = INTERPOLATION,
) -> np.ndarray:
    """Every frame of a (short) video (a path, :class:`VideoBytes` or :class:`VideoSlice`) as
    displayed uint8 RGB ``[N, H, W, 3]``, for in-memory caching; ``size`` and ``short_side`` as in
    :func:`decode_frames`."""
    with open_video(path) as video:
        return video.frames(np.arange(video.index.num_frames), size, short_side=short_side,
                            interpolation=interpolation)  # fmt: skip
