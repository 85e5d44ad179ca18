"""Test helper: write small videos whose frames encode their own index.

Every frame shows its index as a row of 16 binary cells (white = 1) across the image, which
survives lossy codecs, chroma subsampling and rescaling, so a test can read back *which* frames
a loader returned. Nothing here is shipped with the package.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BITS = 16


def index_frame(index: int, width: int, height: int) -> np.ndarray:
    """An RGB uint8 frame ``[H, W, 3]`` that encodes ``index`` in 16 horizontal cells."""
    frame = np.full((height, width, 3), 40, dtype=np.uint8)
    cell = width // BITS
    for bit in range(BITS):
        if (index >> bit) & 1:
            frame[:, bit * cell : (bit + 1) * cell] = 215
    return frame


def read_index(frame: np.ndarray) -> int:
    """Decode the index of an RGB frame ``[H, W, 3]`` (or ``[3, H, W]`` float) made by ``index_frame``."""
    arr = np.asarray(frame, dtype=np.float32)
    if arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    gray = arr.mean(axis=2)
    width = gray.shape[1]
    cell = width / BITS
    value = 0
    # cells are 40 (bit 0) or 215 (bit 1) in uint8 frames; a float frame is judged on its own range
    threshold = 127.5 if arr.max() > 2.0 else (arr.max() + arr.min()) / 2
    for bit in range(BITS):
        # sample the middle of each cell, away from edges blurred by the codec or a resize
        lo, hi = int(bit * cell + cell * 0.3), int(bit * cell + cell * 0.7) + 1
        if gray[:, lo:hi].mean() > threshold:
            value |= 1 << bit
    return value


def write_video(
    path: str | Path,
    num_frames: int = 48,
    fps: float | Fraction = 30,
    width: int = 160,
    height: int = 96,
    codec: str = "libx264",
    bframes: int = 2,
    gop: int = 12,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    texture: bool = False,
    rotation: int = 0,
    hflip: bool = False,
    image: np.ndarray | None = None,
) -> Path:
    """Write ``num_frames`` index frames to ``path`` (container from the suffix).

    ``pts`` (in ``time_base`` units) gives variable frame rate; otherwise frames are evenly
    spaced at ``fps``. ``bframes`` and ``gop`` shape the GOP structure of H.264 output.
    ``texture`` adds a faint per-frame random pattern, so that any two crops of any two frames
    differ (the index cells alone are uniform stripes). ``rotation`` (degrees counterclockwise)
    and ``hflip`` go into the display matrix, as a phone writes them; the stored frames stay
    ``width`` x ``height``. ``image`` (``[height, width, 3]`` uint8) replaces the index frames.
    """
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if rotation or hflip:
            stream.set_display_rotation(rotation, hflip=hflip)
        if codec in ("libx264", "h264"):
            stream.options = {
                "bf": str(bframes),
                "g": str(gop),
                "keyint_min": str(gop),
                "sc_threshold": "0",
                "crf": "18",
            }
        elif codec in ("libvpx", "libvpx-vp9"):
            stream.options = {"g": str(gop), "crf": "20", "b": "0"}
        else:
            stream.options = {"g": str(gop)}
            stream.bit_rate = 2_000_000
        # the muxer may change stream.time_base once the header is written (mp4 does), so
        # frames and encoder keep their own copy of the unit their pts count in
        pts_unit = time_base or Fraction(1, 1000)
        if pts is not None:
            stream.time_base = pts_unit
            stream.codec_context.time_base = pts_unit
        for i in range(num_frames):
            pixels = index_frame(i, width, height) if image is None else image
            if texture:
                noise = np.random.default_rng(i).integers(-25, 26, (height, width, 1))
                pixels = (pixels.astype(np.int16) + noise).clip(0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = pts_unit
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_sar_video(
    path: str | Path,
    sar: Fraction,
    carrier: str = "both",
    num_frames: int = 12,
    fps: float | Fraction = 30,
    width: int = 96,
    height: int = 64,
    bframes: int = 2,
    gop: int = 12,
    texture: bool = False,
    rotation: int = 0,
    image: np.ndarray | None = None,
) -> Path:
    """Write ``num_frames`` index frames (or ``image``) as H.264 with non-square pixels.

    The stored frames are ``width`` x ``height``; a player shows them ``width * sar`` wide.
    ``carrier`` says what carries the sample aspect ratio ``sar``: ``"both"`` the codec (the
    H.264 VUI) and the container (mp4 ``pasp``, mkv display size), as ffmpeg writes it;
    ``"codec"`` the VUI only; ``"container"`` the container only (the VUI leaves it unset).
    ``texture``, ``rotation`` and ``image`` as in :func:`write_video`.
    """
    if carrier not in ("both", "codec", "container"):
        raise ValueError(f"carrier must be both, codec or container, got {carrier!r}")
    path = Path(path)
    sar = Fraction(sar)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        options = {"bf": str(bframes), "g": str(gop), "keyint_min": str(gop),
                   "sc_threshold": "0", "crf": "18"}  # fmt: skip
        if carrier != "both":
            # x264's own VUI setting ("0/0": unset), after the encoder context's value
            vui = f"{sar.numerator}/{sar.denominator}" if carrier == "codec" else "0/0"
            options["x264-params"] = f"sar={vui}"
        stream.options = options
        if carrier != "codec":
            stream.codec_context.sample_aspect_ratio = sar  # what the muxer writes
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(num_frames):
            pixels = index_frame(i, width, height) if image is None else image
            if texture:
                noise = np.random.default_rng(i).integers(-25, 26, (height, width, 1))
                pixels = (pixels.astype(np.int16) + noise).clip(0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
