"""Decoding: a seek returns exactly the frames a full sequential decode returns.

Videos come from ``tests.videos``: every frame encodes its own index, so each test can read
back which frames it got. Covered: H.264 with B-frames (.mp4, .mkv), mpeg4 (.avi), VP9
(.webm), variable frame rate, 29.97 fps, headers without a frame count, bad files.
"""

import os
import random
from fractions import Fraction

import av
import numpy as np
import pytest

from cpd.errors import VideoDecodeError
from cpd.video import decode
from tests.videos import read_index, write_video

N = 90


def _vfr_pts(n):
    rng = random.Random(0)
    pts = [0]
    for _ in range(n - 1):
        pts.append(pts[-1] + rng.choice([10, 17, 33, 33, 50, 90]))
    return pts


CASES = {
    "h264_b2.mp4": dict(codec="libx264", bframes=2, gop=12),
    "h264_b3.mkv": dict(codec="libx264", bframes=3, gop=25),
    "mpeg4.avi": dict(codec="mpeg4", gop=12),
    "vp9.webm": dict(codec="libvpx-vp9", gop=12),
    "vfr.mp4": dict(
        codec="libx264", bframes=2, gop=12, pts=_vfr_pts(N), time_base=Fraction(1, 1000)
    ),
    "ntsc.mp4": dict(codec="libx264", bframes=2, gop=15, fps=Fraction(30000, 1001)),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {name: write_video(root / name, num_frames=N, **kw) for name, kw in CASES.items()}


def sequential(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.parametrize("name", list(CASES))
def test_probe_counts_frames_without_trusting_the_header(videos, name):
    n, fps, w, h = decode.probe(videos[name])
    assert (n, w, h) == (N, 160, 96)
    expected = {"ntsc.mp4": 30000 / 1001, "vfr.mp4": (N - 1) / (_vfr_pts(N)[-1] / 1000)}
    assert fps == pytest.approx(expected.get(name, 30.0), rel=2e-3)


@pytest.mark.parametrize("name", list(CASES))
def test_seek_returns_the_frames_of_a_sequential_decode(videos, name):
    path = videos[name]
    full = sequential(path)
    assert [read_index(f) for f in full] == list(range(N))
    rng = np.random.default_rng(0)
    requests = (
        [[0], [N - 1], [N + 5], list(range(N))]
        + [sorted(rng.integers(0, N, size=8).tolist()) for _ in range(12)]
        + [rng.permutation(N)[:6].tolist()]
    )
    for idx in requests:
        got = decode.decode_frames(path, idx)
        want = [full[min(i, N - 1)] for i in idx]
        assert [read_index(f) for f in got] == [min(i, N - 1) for i in idx]
        # bit-identical pixels, not just the right index
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True)), idx


@pytest.mark.parametrize("name", ["h264_b2.mp4", "h264_b3.mkv", "vfr.mp4"])
def test_skipping_nonref_frames_changes_nothing_but_the_work(videos, name):
    path = videos[name]
    rng = np.random.default_rng(1)
    skipped, plain = decode.DecodeStats(), decode.DecodeStats()
    for _ in range(10):
        start = int(rng.integers(0, N - 32))
        idx = [start + o for o in (0, 4, 8, 13, 17, 22, 26, 31)]
        a = decode.decode_frames(path, idx, (48, 80), stats=skipped)
        b = decode.decode_frames(path, idx, (48, 80), skip_nonref=False, stats=plain)
        assert np.array_equal(a, b)
    assert skipped.fallbacks == plain.fallbacks == 0
    assert skipped.frames_decoded < 0.8 * plain.frames_decoded


def test_resize_happens_in_conversion(videos):
    got = decode.decode_frames(videos["h264_b2.mp4"], [3, 40], (48, 80))
    assert got.shape == (2, 48, 80, 3) and got.dtype == np.uint8
    assert [read_index(f) for f in got] == [3, 40]


def test_decode_all(videos):
    frames = decode.decode_all(videos["vp9.webm"], (48, 80))
    assert frames.shape == (N, 48, 80, 3)
    assert [read_index(f) for f in frames] == list(range(N))


def test_sequential_mode_gives_the_same_frames(videos):
    # a file whose packets cannot be trusted is indexed by counting decoded frames
    path = str(videos["h264_b3.mkv"])
    seq = decode._scan_sequential(path)
    assert not seq.seekable and seq.num_frames == N
    decode._remember(path, seq)
    try:
        got = decode.decode_frames(path, [5, 50, 89, 200])
        assert [read_index(f) for f in got] == [5, 50, 89, 89]
    finally:
        decode.clear_index_cache()


def test_many_loads_do_not_leak_open_files(videos):
    path = videos["h264_b2.mp4"]
    decode.decode_frames(path, [0])
    before = len(os.listdir("/proc/self/fd"))
    for i in range(200):
        decode.decode_frames(path, [i % N, (i * 7) % N])
    assert len(os.listdir("/proc/self/fd")) <= before


# -- bad files -------------------------------------------------------------------------------


def _audio_only(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("mp2", rate=44100)
        for k in range(20):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1152), np.int16), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = 44100, k * 1152
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _truncated(tmp_path, keep):
    src = write_video(tmp_path / "full.mp4", num_frames=30)
    dst = tmp_path / "truncated.mp4"
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


def _missing(d):
    return d / "missing.mp4"


def _empty(d):
    (d / "empty.mp4").write_bytes(b"")
    return d / "empty.mp4"


def _garbage(d):
    (d / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    return d / "garbage.mp4"


@pytest.mark.parametrize(
    "make,reason",
    [
        (_missing, "no such file"),
        (_empty, "empty file"),
        (_garbage, "cannot open"),
        (lambda d: _audio_only(d / "audio.mp4"), "no video stream"),
        (lambda d: _truncated(d, 600), "cannot open"),
    ],
    ids=["missing", "empty", "garbage", "audio-only", "truncated"],
)
def test_bad_files_raise_video_decode_error(tmp_path, make, reason):
    path = make(tmp_path)
    for call in (lambda: decode.probe(path), lambda: decode.decode_frames(path, [0, 5])):
        with pytest.raises(VideoDecodeError) as err:
            call()
        assert str(path) in str(err.value) and reason in err.value.reason


def test_truncated_mkv_tail_still_gives_clamped_frames(tmp_path):
    src = write_video(tmp_path / "full.mkv", num_frames=60)
    dst = tmp_path / "cut.mkv"
    dst.write_bytes(src.read_bytes()[: src.stat().st_size * 2 // 3])
    n = decode.probe(dst)[0]
    assert 10 < n < 60
    got = decode.decode_frames(dst, [0, n // 2, 59])
    assert [read_index(f) for f in got[:2]] == [0, n // 2]
    assert read_index(got[2]) >= n - 3  # the last frame that decodes, repeated


def test_resolution_change_midstream_gives_frames_of_the_first_size(tmp_path):
    # two raw H.264 streams back to back: the decoder meets a new size at frame 10
    first = write_video(tmp_path / "a.h264", num_frames=10, width=160, height=96)
    second = write_video(tmp_path / "b.h264", num_frames=10, width=128, height=128)
    joined = tmp_path / "ab.h264"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    frames = decode.decode_frames(joined, [0, 5, 12, 19], short_side=48)
    assert frames.shape == (4, 48, 80, 3)
    assert [read_index(f) for f in frames] == [0, 5, 2, 9]  # the second stream counts anew
    assert decode.decode_frames(joined, [3, 15]).shape == (2, 96, 160, 3)
