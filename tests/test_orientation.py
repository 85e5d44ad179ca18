"""Display matrices (phone videos): decoding, clips, the frame cache and ``cpd prepare`` all
give frames upright, as players show them."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

import cpd
from cpd.data.cache import FrameCache
from cpd.video import decode
from cpd.video.transcode import PrepareSettings, transcode
from tests.videos import read_index, write_video

# 8 blocks of 16x16 pixels, each its own colour: any wrong turn or mirror moves a colour
BLOCK_COLOURS = np.array(
    [[[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]],
     [[230, 30, 230], [30, 230, 230], [120, 120, 120], [250, 250, 250]]], dtype=np.uint8,
)  # fmt: skip
BLOCKS = np.kron(BLOCK_COLOURS, np.ones((16, 16, 1), dtype=np.uint8))  # [32, 64, 3]


def shown(image: np.ndarray, degrees: int, hflip: bool) -> np.ndarray:
    """How a player shows ``image`` under PyAV's display rotation: counterclockwise by
    ``degrees``, then mirrored left-right (independent of the code under test)."""
    out = np.rot90(image, k=degrees // 90)
    return out[:, ::-1] if hflip else out


@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
def test_every_quarter_turn_and_mirror_is_undone(tmp_path: Path, degrees: int, hflip: bool):
    path = write_video(tmp_path / "phone.mp4", num_frames=3, width=64, height=32, image=BLOCKS,
                       rotation=degrees, hflip=hflip)  # fmt: skip
    frames = decode.decode_frames(path, [0, 1, 2])
    expected = shown(BLOCKS, degrees, hflip)
    assert frames.shape == (3, *expected.shape)
    error = np.abs(frames.astype(np.int16) - expected.astype(np.int16)).mean()
    assert error < 8, error  # codec noise; a wrong orientation misplaces whole blocks
    # the stored size does not change; the reader reports the shown one
    with decode.open_video(path) as video:
        assert (video.index.width, video.index.height) == (64, 32)
        video.frames([0])
        assert video.display_size == expected.shape[:2]


def test_turned_frames_after_seeks_keep_their_identity_and_size(tmp_path: Path):
    path = write_video(tmp_path / "portrait.mp4", num_frames=48, width=160, height=96, gop=12,
                       rotation=-90)  # fmt: skip
    wanted = [40, 3, 27, 27, 15]
    frames = decode.decode_frames(path, wanted, size=(80, 48))
    assert frames.shape == (5, 80, 48, 3)
    # -90 degrees: turned clockwise for display, so a counterclockwise turn restores the cells
    assert [read_index(np.rot90(f, k=1)) for f in frames] == wanted
    short = decode.decode_frames(path, wanted, short_side=48)
    assert short.shape == (5, 80, 48, 3)


def test_clip_of_a_turned_video_matches_the_same_video_stored_upright(tmp_path: Path):
    rng = np.random.default_rng(0)
    image = np.kron(rng.integers(0, 256, (6, 10, 3), dtype=np.uint8), np.ones((16, 16, 1),
                    dtype=np.uint8))  # fmt: skip
    stored = write_video(tmp_path / "stored.mp4", num_frames=40, width=160, height=96,
                         image=image, rotation=90)  # fmt: skip
    upright_image = np.ascontiguousarray(np.rot90(image))
    upright = write_video(tmp_path / "upright.mp4", num_frames=40, width=96, height=160,
                          image=upright_image)  # fmt: skip
    a = cpd.load_clip(stored, num_frames=4, stride=2, crop_size=64, train=False)
    b = cpd.load_clip(upright, num_frames=4, stride=2, crop_size=64, train=False)
    assert a.shape == b.shape == (3, 4, 64, 64)
    # normalised units (1 = 57 grey levels): resizing before or after the turn and the codec
    # differ at block edges only; the wrong turn gave a mean of 1.35 and a median of 1.15
    assert (a - b).abs().mean() < 0.3 and (a - b).abs().median() < 0.05
    views = cpd.load_clips(stored, num_clips=2, num_crops=3, num_frames=4, stride=2, crop_size=64)
    ref = cpd.load_clips(upright, num_clips=2, num_crops=3, num_frames=4, stride=2, crop_size=64)
    assert views.shape == ref.shape
    assert (views - ref).abs().mean() < 0.3 and (views - ref).abs().median() < 0.05
    # portrait: the three crops run top to bottom, so they differ
    assert not torch.allclose(views[0], views[2], atol=0.1)


def test_frame_cache_holds_turned_videos_upright(tmp_path: Path):
    path = str(write_video(tmp_path / "p.mp4", num_frames=30, width=160, height=96, texture=True,
                           rotation=90))  # fmt: skip
    cache = FrameCache(None, interpolation="FAST_BILINEAR")
    for seed in range(3):
        ours = cache(path, seed=seed, scale_range=(96, 96), crop_size=64)
        ref = cpd.load_clip(path, seed=seed, scale_range=(96, 96), crop_size=64)
        assert torch.equal(ours, ref), seed
    video = cache.get(path)
    assert video.frames.shape[1:3] == (160, 96) and (video.height, video.width) == (160, 96)
    assert cache.nbytes == 30 * 160 * 96 * 3


def test_prepare_writes_turned_videos_upright(tmp_path: Path):
    source = write_video(tmp_path / "phone.mp4", num_frames=20, fps=10, width=160, height=96,
                         rotation=-90)  # fmt: skip
    settings = PrepareSettings(seconds=0, short_side=48, preset="ultrafast")
    info = transcode(source, tmp_path / "out.mp4", settings)
    assert (info["width"], info["height"]) == (48, 80) and info["frames"] == 20
    with av.open(str(tmp_path / "out.mp4")) as container:
        frames = list(container.decode(video=0))
    assert all(decode.orientation(f) == decode.UPRIGHT for f in frames)
    assert (frames[0].width, frames[0].height) == (48, 80)
    cells = [read_index(np.rot90(f.to_ndarray(format="rgb24"), k=1)) for f in frames]
    assert cells == list(range(20))


def test_prepare_keeps_colours_of_turned_videos(tmp_path: Path):
    source = write_video(tmp_path / "blocks.mp4", num_frames=4, width=64, height=32,
                         image=BLOCKS, rotation=90)  # fmt: skip
    settings = PrepareSettings(seconds=0, short_side=32, preset="ultrafast", crf=10)
    info = transcode(source, tmp_path / "out.mp4", settings)
    assert (info["width"], info["height"]) == (32, 64)
    frames = decode.decode_frames(tmp_path / "out.mp4", [0, 3])
    error = np.abs(frames.astype(np.int16) - shown(BLOCKS, 90, False).astype(np.int16)).mean()
    assert error < 8, error
