"""What ``cpd`` decodes a video from: a path, a video in memory, or a video inside a larger file.

:class:`VideoBytes` holds a video's contents (one sample of a shard streamed from remote
storage); :class:`VideoSlice` names a byte range of a local file that is a whole video file (a
member of an uncompressed tar shard on a local disk): FFmpeg reads it in place through its
``subfile`` protocol, only the parts a clip needs, as it reads a file. Both carry a name that
errors and caches use.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from typing import TypeAlias


@dataclass(frozen=True)
class VideoBytes:
    """A video file's contents held in memory, under a name that errors and caches use.

    Accepted wherever ``cpd`` takes a video path (``load_clip``, ``load_clips``,
    ``decode_frames``, ``probe``, ``FrameCache``, ...), with identical results: e.g. one sample
    of a webdataset shard, ``VideoBytes(sample["__key__"] + ".mp4", sample["mp4"])``. The name
    is what a :class:`~cpd.errors.VideoDecodeError` names and what a
    :class:`~cpd.data.FrameCache` keys the video by; the format is found from the data.
    """

    name: str
    data: bytes = field(repr=False)  # a repr never dumps megabytes of video

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"VideoBytes name must be a str, got {type(self.name).__name__}")
        if not isinstance(self.data, bytes):
            raise TypeError(f"{self.name}: VideoBytes data must be bytes, got "
                            f"{type(self.data).__name__}")  # fmt: skip

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class VideoSlice:
    """A video file stored as ``size`` bytes at ``offset`` of the local file ``path`` (e.g. a
    member of an uncompressed tar), under ``name``; accepted wherever :class:`VideoBytes` is,
    with identical results. Nothing is read until a clip is decoded, and then only what the
    clip needs."""

    name: str
    path: str
    offset: int
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"VideoSlice name must be a str, got {type(self.name).__name__}")
        if self.offset < 0 or self.size < 0:
            raise ValueError(f"{self.name}: offset and size must be >= 0")

    def __str__(self) -> str:
        return self.name

    def read(self) -> bytes:
        """The slice's bytes (for writing it out whole; decoding never needs this)."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.path}: {self.name} ends after {len(data)} of {self.size} bytes")
        return data

    def url(self) -> str:
        """The FFmpeg URL that reads the slice in place (its ``subfile`` protocol)."""
        end = self.offset + self.size
        # file: keeps a path with a colon from being taken for a protocol
        return f"subfile,,start,{self.offset},end,{end},,:file:{os.path.abspath(self.path)}"


# What every reader of cpd.video takes: a path, a video in memory, or a slice of a file
VideoSource: TypeAlias = str | os.PathLike[str] | VideoBytes | VideoSlice
Source: TypeAlias = str | VideoBytes | VideoSlice  # a VideoSource with the path as str


def as_source(source: VideoSource) -> Source:
    """``source`` as the decoder handles it: a path as ``str``, else the object itself."""
    return source if isinstance(source, VideoBytes | VideoSlice) else os.fspath(source)


def source_name(source: VideoSource) -> str:
    """The path, or the in-memory or sliced video's name: how errors and caches name it."""
    return source.name if isinstance(source, VideoBytes | VideoSlice) else os.fspath(source)


def content_key(source: Source) -> tuple:
    """What identifies a video's contents: (path, size, mtime) of a file, (name, length,
    CRC-32) of an in-memory video, (path, offset, size) of a slice with the file's (size,
    inode, mtime); raises ``OSError`` for a missing file."""
    if isinstance(source, VideoBytes):
        return ("bytes", source.name, len(source.data), zlib.crc32(source.data))
    if isinstance(source, VideoSlice):
        st = os.stat(source.path)
        return ("slice", os.path.abspath(source.path), source.offset, source.size,
                st.st_size, st.st_ino, st.st_mtime_ns)  # fmt: skip
    st = os.stat(source)
    return (os.path.abspath(source), st.st_size, st.st_mtime_ns)
