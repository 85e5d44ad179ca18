"""Video input: decoding (``decode``), clip sampling (``sampling``), transforms, clip loading.

``load_clip`` / ``load_clips`` are the entry points; ``decode_frames`` + ``crop_flip_normalize``
(or ``train_transform`` for cached frames) are the two halves they are built from;
``decode_all`` decodes a whole short video for in-memory caching; ``probe`` is cheap metadata
(the stored size), ``display_size`` the size frames are shown at (square pixels, upright). Each
takes a path, a ``VideoBytes`` (a video held in memory, e.g. a streamed shard's sample) or a
``VideoSlice`` (a video stored inside a local file, e.g. a member of a tar shard on disk).
"""

from cpd.video.clip import load_clip, load_clips
from cpd.video.decode import (
    DecodeStats,
    VideoBytes,
    VideoIndex,
    VideoReader,
    VideoSlice,
    VideoSource,
    clear_index_cache,
    decode_all,
    decode_frames,
    display_size,
    forget_index,
    open_video,
    probe,
    video_index,
)
from cpd.video.transforms import (
    crop_flip_normalize,
    default_scale_range,
    make_generator,
    resize_short_side,
    train_transform,
)

__all__ = [
    "DecodeStats",
    "VideoBytes",
    "VideoIndex",
    "VideoReader",
    "VideoSlice",
    "VideoSource",
    "clear_index_cache",
    "crop_flip_normalize",
    "decode_all",
    "decode_frames",
    "default_scale_range",
    "display_size",
    "forget_index",
    "load_clip",
    "load_clips",
    "make_generator",
    "open_video",
    "probe",
    "resize_short_side",
    "train_transform",
    "video_index",
]
