"""Video input: decoding (``decode``), clip sampling (``sampling``), transforms, clip loading.

``load_clip`` / ``load_clips`` are the entry points; ``decode_frames`` + ``crop_flip_normalize``
(or ``train_transform`` for cached frames) are the two halves they are built from;
``decode_all`` decodes a whole short video for in-memory caching; ``probe`` is cheap metadata.
"""

from cpd.video.clip import load_clip, load_clips
from cpd.video.decode import (
    DecodeStats,
    VideoIndex,
    VideoReader,
    clear_index_cache,
    decode_all,
    decode_frames,
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
    "VideoIndex",
    "VideoReader",
    "clear_index_cache",
    "crop_flip_normalize",
    "decode_all",
    "decode_frames",
    "default_scale_range",
    "load_clip",
    "load_clips",
    "make_generator",
    "open_video",
    "probe",
    "resize_short_side",
    "train_transform",
    "video_index",
]
