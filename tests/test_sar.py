"""Non-square pixels (a sample aspect ratio other than 1): decoding, clips, the frame cache,
in-memory videos and ``cpd prepare`` all give frames as players show them, ``width * SAR`` x
``height``, also turned by a display matrix; a SAR of 1 changes nothing."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cpd
from cpd.data.cache import FrameCache
from cpd.video import decode
from cpd.video.decode import UPRIGHT, VideoBytes, shown_size
from cpd.video.transcode import PrepareSettings, transcode
from cpd.video.transforms import short_side_size
from tests.videos import read_index, write_sar_video, write_video

BLOCK = 16  # displayed block size: every block must come out square


def blocks(rows: int, cols: int, block_w: int, seed: int = 0) -> np.ndarray:
    """``rows`` x ``cols`` random colour blocks, each ``BLOCK`` high and ``block_w`` wide."""
    colours = np.random.default_rng(seed).integers(20, 236, (rows, cols, 3), dtype=np.uint8)
    return np.kron(colours, np.ones((BLOCK, block_w, 1), dtype=np.uint8))


# (SAR, stored block width): stored frames of 4 x 6 blocks, each shown BLOCK x BLOCK
CASES = {
    "2:1": (Fraction(2, 1), 8),  # anamorphic: a 48x64 frame is shown 96x64
    "16:15": (Fraction(16, 15), 15),  # PAL 4:3 (720x576 is shown 768x576): 90x64 -> 96x64
    "4:3": (Fraction(4, 3), 12),  # HDV 1440x1080 -> 1920x1080: 72x64 -> 96x64
    "1:2": (Fraction(1, 2), 32),  # tall pixels: 192x64 -> 96x64
}
ROWS, COLS = 4, 6
SHOWN = blocks(ROWS, COLS, BLOCK)  # [64, 96, 3]: what a player shows for every case


def error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def pasp(path: Path) -> Fraction | None:
    """The mp4 ``pasp`` box (hSpacing / vSpacing) read from the bytes, or None."""
    data = path.read_bytes()
    at = data.find(b"pasp")
    if at < 0:
        return None
    h, v = struct.unpack(">II", data[at + 4 : at + 12])
    return Fraction(h, v)


def codec_sar(path: Path) -> Fraction | None:
    """The sample aspect ratio the H.264 decoder reports (from the VUI), or None if unset."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        next(container.decode(stream))
        return stream.codec_context.sample_aspect_ratio


@pytest.fixture(scope="module")
def sar_videos(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("sar")
    out = {}
    for name, (sar, block_w) in CASES.items():
        for carrier in ("both", "codec", "container"):
            path = root / f"{name.replace(':', 'x')}_{carrier}.mp4"
            out[name, carrier] = write_sar_video(
                path,
                sar,
                carrier,
                num_frames=12,
                width=COLS * block_w,
                height=ROWS * BLOCK,
                image=blocks(ROWS, COLS, block_w),
            )
    return out


@pytest.mark.parametrize("carrier", ["both", "codec", "container"])
def test_the_test_videos_carry_their_sar_where_said(sar_videos, carrier):
    for name, (sar, _) in CASES.items():
        path = sar_videos[name, carrier]
        assert pasp(path) == (None if carrier == "codec" else sar), name
        assert codec_sar(path) == (None if carrier == "container" else sar), name


@pytest.mark.parametrize("carrier", ["both", "codec", "container"])
@pytest.mark.parametrize("name", list(CASES))
def test_decoded_frames_have_square_pixels(sar_videos, name, carrier):
    path = sar_videos[name, carrier]
    sar, block_w = CASES[name]
    frames = decode.decode_frames(path, [0, 5, 11])
    assert frames.shape == (3, ROWS * BLOCK, COLS * BLOCK, 3)
    for frame in frames:
        # chroma subsampling at the stored width and blur at block edges: 6 to 9 grey levels
        # (square pixels: 3); a misplaced block costs ~75 in its area
        assert error(frame, SHOWN) < 12
    # the same as the stored frames resized to the display size by torch
    stored = decode.decode_frames(path, [5], size=(ROWS * BLOCK, COLS * block_w))
    resized = F.interpolate(
        torch.from_numpy(stored).permute(0, 3, 1, 2).float(),
        size=SHOWN.shape[:2],
        mode="bilinear",
        antialias=True,
    )
    resized = resized.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    assert error(frames[1], resized[0]) < 8  # swscale vs torch resampling: 2.4 to 5.6
    with decode.open_video(path) as video:
        assert video.display_size == SHOWN.shape[:2]  # learnt from the first frame
        assert video.sample_aspect_ratio == sar
        assert (video.index.width, video.index.height) == (COLS * block_w, ROWS * BLOCK)
    assert decode.probe(path)[2:] == (COLS * block_w, ROWS * BLOCK)  # probe: as stored
    assert decode.display_size(path) == SHOWN.shape[:2]
    short = decode.decode_frames(path, [0, 11], short_side=32)
    assert short.shape == (2, 32, 48, 3) and error(short[0], SHOWN[1::2, 1::2]) < 12


def test_the_container_wins_over_the_codec(tmp_path):
    # pasp 2:1, the VUI 1:1: players (and FFmpeg) follow the container
    path = tmp_path / "conflict.mp4"
    image = blocks(ROWS, COLS, 8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 48, 64, "yuv420p"
        stream.options = {"x264-params": "sar=1/1", "crf": "18"}
        stream.codec_context.sample_aspect_ratio = Fraction(2)
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert pasp(path) == 2 and codec_sar(path) == 1
    frames = decode.decode_frames(path, [0, 2])
    assert frames.shape == (2, 64, 96, 3) and error(frames[0], SHOWN) < 12


@pytest.mark.parametrize("degrees", [90, -90])
def test_sar_composes_with_the_display_matrix(tmp_path, degrees):
    # stored 48x64 at 2:1 -> shown 96x64 -> turned upright 64x96 (a sideways phone video)
    path = write_sar_video(
        tmp_path / "phone.mp4",
        Fraction(2),
        num_frames=6,
        width=48,
        height=64,
        image=blocks(ROWS, COLS, 8),
        rotation=degrees,
    )
    expected = np.rot90(SHOWN, k=degrees // 90)
    frames = decode.decode_frames(path, [0, 5])
    assert frames.shape == (2, 96, 64, 3)
    assert error(frames[0], expected) < 12
    with decode.open_video(path) as video:
        assert video.display_size == (96, 64) and video.orientation != UPRIGHT
    assert decode.decode_frames(path, [1], short_side=32).shape == (1, 48, 32, 3)


def test_shown_size():
    assert shown_size(720, 576, Fraction(16, 15), UPRIGHT) == (576, 768)
    assert shown_size(1440, 1080, Fraction(4, 3), UPRIGHT) == (1080, 1920)
    assert shown_size(720, 480, Fraction(10, 11), UPRIGHT) == (480, 655)  # 654.5 rounds up
    assert shown_size(1440, 1080, Fraction(4, 3), (True, False, True)) == (1920, 1080)
    assert shown_size(160, 96, Fraction(1), UPRIGHT) == (96, 160)


@pytest.fixture(scope="module")
def clip_videos(tmp_path_factory) -> dict[str, Path]:
    """A 2:1 video and the same pictures stored with square pixels (what a player shows)."""
    root = tmp_path_factory.mktemp("clips")
    shown = blocks(6, 10, BLOCK, seed=1)  # [96, 160]
    stored = blocks(6, 10, 8, seed=1)  # [96, 80] at 2:1
    return {
        "sar": write_sar_video(
            root / "sar.mp4", Fraction(2), num_frames=40, width=80, height=96, image=stored
        ),
        "vui": write_sar_video(
            root / "vui.mp4",
            Fraction(2),
            "codec",
            num_frames=40,
            width=80,
            height=96,
            image=stored,
            texture=True,
        ),
        "square": write_video(
            root / "square.mp4", num_frames=40, width=160, height=96, image=shown
        ),
    }


def test_clips_match_the_same_pictures_with_square_pixels(clip_videos):
    sar, square = clip_videos["sar"], clip_videos["square"]
    # normalised units (1 = 57 grey levels): the stretch and the codec differ at block edges;
    # ignoring the SAR makes the clip a different shape, or crops other blocks
    a = cpd.load_clip(sar, num_frames=4, stride=2, crop_size=64, train=False)
    b = cpd.load_clip(square, num_frames=4, stride=2, crop_size=64, train=False)
    assert a.shape == b.shape == (3, 4, 64, 64)
    assert (a - b).abs().mean() < 0.1  # measured 0.04; another crop: 1.2
    for seed in range(3):
        a = cpd.load_clip(sar, num_frames=4, stride=2, crop_size=64, seed=seed, hflip=0)
        b = cpd.load_clip(square, num_frames=4, stride=2, crop_size=64, seed=seed, hflip=0)
        assert (a - b).abs().mean() < 0.2, seed  # the same window, scale and crop: <= 0.13
    views = cpd.load_clips(sar, num_clips=2, num_crops=3, num_frames=4, stride=2, crop_size=64)
    ref = cpd.load_clips(square, num_clips=2, num_crops=3, num_frames=4, stride=2, crop_size=64)
    assert views.shape == ref.shape == (6, 3, 4, 64, 64)
    assert (views - ref).abs().mean() < 0.1
    # landscape as shown (160x96), though stored portrait (80x96): crops run left to right
    assert not torch.allclose(views[0], views[2], atol=0.1)


@pytest.mark.parametrize("which", ["sar", "vui"])
def test_frame_cache_holds_frames_as_shown(clip_videos, which):
    path = str(clip_videos[which])
    cache = FrameCache(None, interpolation="FAST_BILINEAR")
    for seed in range(3):
        ours = cache(path, seed=seed, scale_range=(96, 96), crop_size=64)
        ref = cpd.load_clip(path, seed=seed, scale_range=(96, 96), crop_size=64)
        assert torch.equal(ours, ref), seed
    video = cache.get(path)
    assert video.frames.shape[1:3] == (96, 160) and (video.height, video.width) == (96, 160)
    assert cache.nbytes == 40 * 96 * 160 * 3
    views = cache.load_clips(path, num_clips=2, num_crops=3, num_frames=4, stride=2, crop_size=64)
    ref = cpd.load_clips(path, num_clips=2, num_crops=3, num_frames=4, stride=2, crop_size=64)
    assert views.shape == ref.shape and (views - ref).abs().mean() < 0.15  # torch vs swscale
    # the short side is measured as shown: stored 80x96 it would be 80 (kept at 88), shown
    # 160x96 it is 96, so a cache at 88 scales the frames
    scaled = FrameCache(88)
    assert scaled.get(path).frames.shape[1:3] == short_side_size(96, 160, 88) == (88, 146)


def test_in_memory_videos_with_non_square_pixels(sar_videos, clip_videos):
    for carrier in ("codec", "container"):
        path = sar_videos["4:3", carrier]
        data = VideoBytes(path.name, path.read_bytes())
        assert np.array_equal(
            decode.decode_frames(data, [0, 7]), decode.decode_frames(path, [0, 7])
        )
        assert decode.display_size(data) == SHOWN.shape[:2]
    path = clip_videos["vui"]
    data = VideoBytes("vui.mp4", path.read_bytes())
    for seed in range(2):
        assert torch.equal(
            cpd.load_clip(data, seed=seed, crop_size=64),
            cpd.load_clip(path, seed=seed, crop_size=64),
        )
    assert torch.equal(
        FrameCache(None)(data, train=False, crop_size=64),
        FrameCache(None)(path, train=False, crop_size=64),
    )


def test_a_sar_of_one_changes_nothing(tmp_path):
    image = blocks(ROWS, COLS, BLOCK)
    one = write_sar_video(
        tmp_path / "one.mp4", Fraction(1), num_frames=6, width=96, height=64, image=image
    )
    plain = write_video(tmp_path / "plain.mp4", num_frames=6, width=96, height=64, image=image)
    assert pasp(one) == 1 and codec_sar(one) == 1 and codec_sar(plain) is None
    assert np.array_equal(decode.decode_frames(one, [0, 5]), decode.decode_frames(plain, [0, 5]))
    assert decode.display_size(plain) == decode.display_size(one) == (64, 96)


def test_an_absurd_sar_is_ignored(tmp_path):
    path = write_sar_video(tmp_path / "absurd.mp4", Fraction(20), num_frames=3, width=96, height=64)
    assert pasp(path) == 20 and codec_sar(path) == 20
    assert decode.decode_frames(path, [0]).shape == (1, 64, 96, 3)


@pytest.mark.parametrize("carrier", ["both", "codec"])
def test_prepare_writes_square_pixels_at_the_display_aspect(sar_videos, tmp_path, carrier):
    source = sar_videos["16:15", carrier]  # 90x64 stored, 96x64 shown
    settings = PrepareSettings(seconds=0, short_side=32, preset="ultrafast", crf=10)
    info = transcode(source, tmp_path / "out.mp4", settings)
    assert (info["width"], info["height"]) == (48, 32) and info["frames"] == 12
    assert pasp(tmp_path / "out.mp4") is None and codec_sar(tmp_path / "out.mp4") is None
    frames = decode.decode_frames(tmp_path / "out.mp4", [0, 11])
    assert frames.shape == (2, 32, 48, 3)
    reference = decode.decode_frames(source, [0], size=(32, 48))[0]  # resized as shown
    assert error(frames[0], reference) < 10  # two resizes and a second encode: 6.3


def test_prepare_of_a_sideways_video_with_sar(tmp_path):
    # stored 80x96 at 2:1 (shown 160x96), turned: written 96x160 upright, then short side 48
    source = write_sar_video(
        tmp_path / "phone.mp4", Fraction(2), num_frames=10, width=80, height=96, rotation=90
    )
    info = transcode(
        source, tmp_path / "out.mp4", PrepareSettings(seconds=0, short_side=48, preset="ultrafast")
    )
    assert (info["width"], info["height"]) == (48, 80)
    with av.open(str(tmp_path / "out.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert frames[0].shape == (80, 48, 3)
    # the index cells run along the stored width: turned back, they read the frame numbers
    assert [read_index(np.rot90(f, k=-1)) for f in frames] == list(range(10))
