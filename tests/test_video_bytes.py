"""``VideoBytes``: a video held in memory decodes exactly as the same file does (sampling, seeks,
non-reference skipping, sequential fallback, display matrix), and bad bytes raise
``VideoDecodeError`` naming the video."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch

import cpd
from cpd.data.cache import FrameCache
from cpd.errors import VideoDecodeError
from cpd.video import decode
from cpd.video.decode import DecodeStats, VideoBytes
from tests.videos import read_index, write_video


def as_bytes(path: Path) -> VideoBytes:
    return VideoBytes(f"shard-0/{path.name}", path.read_bytes())


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bytes")
    return {
        # 3 B-frames, GOP 12: seeks and non-reference skipping both matter
        "bframes": write_video(
            root / "bframes.mp4",
            num_frames=90,
            width=160,
            height=96,
            bframes=3,
            gop=12,
            texture=True,
        ),
        "phone": write_video(
            root / "phone.mp4", num_frames=40, width=160, height=96, texture=True, rotation=90
        ),
        "webm": write_video(root / "vp9.webm", num_frames=60, codec="libvpx-vp9", gop=10),
        # an elementary stream: no container header, so the open probes the stream
        "raw": write_video(root / "raw.h264", num_frames=40, width=160, height=96),
    }


def test_exported_and_repr_leaves_out_the_data():
    assert cpd.VideoBytes is cpd.video.VideoBytes is VideoBytes
    video = VideoBytes("a.mp4", b"x" * 10_000)
    assert repr(video) == "VideoBytes(name='a.mp4')" and str(video) == "a.mp4"
    with pytest.raises(TypeError, match="a.mp4.*bytes"):
        VideoBytes("a.mp4", "not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["bframes", "phone", "webm", "raw"])
def test_frames_index_and_work_equal_the_files(videos, name):
    path = videos[name]
    data = as_bytes(path)
    assert decode.probe(data) == decode.probe(path)
    # in memory as on disk, the open skips FFmpeg's stream probing where the header suffices
    fast = decode._open_fast(io.BytesIO(data.data))
    assert fast is not None
    fast.close()
    wanted = [0, 37, 5, 5, 200, 19, 38]
    file_stats, bytes_stats = DecodeStats(), DecodeStats()
    a = decode.decode_frames(path, wanted, short_side=48, stats=file_stats)
    b = decode.decode_frames(data, wanted, short_side=48, stats=bytes_stats)
    assert np.array_equal(a, b)
    # the same seeks, the same frames decoded (non-reference ones skipped alike)
    assert bytes_stats == file_stats
    assert np.array_equal(decode.decode_all(path, (32, 48)), decode.decode_all(data, (32, 48)))
    with decode.open_video(data) as video:
        assert video.path == data.name
        video.frames([3])
        with decode.open_video(path) as ref:
            ref.frames([3])
            assert video.display_size == ref.display_size
            assert video.orientation == ref.orientation


@pytest.mark.parametrize("name", ["bframes", "phone"])
def test_clips_equal_the_files_clips(videos, name):
    path = videos[name]
    data = as_bytes(path)
    for seed in range(4):
        ref = cpd.load_clip(path, num_frames=8, stride=2, crop_size=64, seed=seed)
        assert torch.equal(
            cpd.load_clip(data, num_frames=8, stride=2, crop_size=64, seed=seed), ref
        ), seed
    test = cpd.load_clip(data, num_frames=8, stride=2, crop_size=64, train=False)
    assert torch.equal(test, cpd.load_clip(path, num_frames=8, stride=2, crop_size=64, train=False))
    views = cpd.load_clips(data, num_clips=3, num_crops=3, num_frames=4, stride=2, crop_size=48)
    ref = cpd.load_clips(path, num_clips=3, num_crops=3, num_frames=4, stride=2, crop_size=48)
    assert views.shape == (9, 3, 4, 48, 48) and torch.equal(views, ref)


def test_sequential_fallback_gives_the_files_frames(videos):
    path = videos["bframes"]
    data = as_bytes(path)
    seq = decode._scan_sequential(data)
    assert not seq.seekable and seq.num_frames == 90
    decode._remember(data, seq)
    decode._remember(path, decode._scan_sequential(path))
    try:
        stats = DecodeStats()
        got = decode.decode_frames(data, [5, 50, 89, 200], stats=stats)
        assert [read_index(f) for f in got] == [5, 50, 89, 89] and stats.seeks == 0
        assert np.array_equal(got, decode.decode_frames(path, [5, 50, 89, 200]))
    finally:
        decode.clear_index_cache()


def test_a_decode_that_disagrees_with_the_index_falls_back_alike(videos):
    # an index whose timestamps no frame has: the seeking decode cannot find its frames
    path = videos["bframes"]
    data = as_bytes(path)
    real = decode.video_index(path)
    wrong = dataclasses.replace(real, pts=real.pts + 1)
    results = []
    try:
        for source in (path, data):
            decode._remember(source, wrong)
            stats = DecodeStats()
            results.append(decode.decode_frames(source, [5, 50, 89], stats=stats))
            assert stats.fallbacks == 1
            assert not decode.video_index(source).seekable  # counted by decoding from now on
    finally:
        decode.clear_index_cache()
    assert [read_index(f) for f in results[1]] == [5, 50, 89]
    assert np.array_equal(results[0], results[1])


def test_index_cache_tells_different_data_under_one_name_apart(videos):
    a = VideoBytes("same-name.mp4", videos["bframes"].read_bytes())
    b = VideoBytes("same-name.mp4", videos["phone"].read_bytes())
    assert decode.probe(a)[0] == 90 and decode.probe(b)[0] == 40
    assert decode.probe(a)[0] == 90  # cached, still a's


def test_frame_cache_from_bytes_equals_frame_cache_from_the_file(videos):
    path = videos["bframes"]
    data = as_bytes(path)
    from_file, from_bytes = FrameCache(80), FrameCache(80)
    for seed in range(3):
        assert torch.equal(
            from_bytes(data, seed=seed, crop_size=64, scale_range=(72, 80)),
            from_file(path, seed=seed, crop_size=64, scale_range=(72, 80)),
        )
    assert torch.equal(
        from_bytes.load_clips(data, num_clips=2, crop_size=64),
        from_file.load_clips(path, num_clips=2, crop_size=64),
    )
    # keyed by name: cached once, found again by name or by an equal VideoBytes
    assert data in from_bytes and data.name in from_bytes and str(path) not in from_bytes
    assert from_bytes.get(VideoBytes(data.name, data.data)) is from_bytes.get(data)
    assert from_bytes.nbytes == from_file.nbytes and len(from_bytes) == 1
    filled = FrameCache(80)
    report = filled.fill([data, as_bytes(videos["phone"]), data], progress=False)
    assert report["decoded"] == 2 and report["failed"] == 0
    assert np.array_equal(filled.get(data).frames, from_file.get(path).frames)


def _truncated_head(path: Path) -> bytes:
    return path.read_bytes()[:600]  # the header only: moov (mp4 writes it last) is missing


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (np.random.default_rng(0).bytes(4000), "cannot open"),
        (b"truncated", "cannot open"),
    ],
    ids=["empty", "garbage", "truncated"],
)
def test_bad_bytes_raise_video_decode_error_naming_the_video(videos, data, reason):
    if data == b"truncated":
        data = _truncated_head(videos["bframes"])
    video = VideoBytes("shard-3/sample-17.mp4", data)
    calls = [
        lambda: decode.probe(video),
        lambda: decode.decode_frames(video, [0, 5]),
        lambda: cpd.load_clip(video, seed=0),
        lambda: cpd.load_clips(video),
    ]
    for call in calls:
        with pytest.raises(VideoDecodeError) as err:
            call()
        assert err.value.path == video.name and reason in err.value.reason
        assert str(err.value).startswith("shard-3/sample-17.mp4: ")
    cache = FrameCache()
    with pytest.raises(VideoDecodeError, match="sample-17.mp4"):
        cache(video, seed=0)
    assert reason in cache.failures[video.name]
    assert cache.fill([video], progress=False)["already_cached"] == 1  # the failure is kept


def test_truncated_tail_gives_what_the_truncated_file_gives(tmp_path):
    src = write_video(tmp_path / "full.mkv", num_frames=60)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size * 2 // 3])
    data = as_bytes(cut)
    n = decode.probe(data)[0]
    assert 10 < n < 60 and decode.probe(cut)[0] == n
    got = decode.decode_frames(data, [0, n // 2, 59])
    assert np.array_equal(got, decode.decode_frames(cut, [0, n // 2, 59]))
    assert [read_index(f) for f in got[:2]] == [0, n // 2]


def test_forget_index_drops_one_video_and_keeps_the_others(tmp_path):
    a = write_video(tmp_path / "a.mp4", num_frames=12)
    b = VideoBytes("b.mp4", write_video(tmp_path / "b.mp4", num_frames=16).read_bytes())
    decode.clear_index_cache()
    decode.video_index(a), decode.video_index(b)
    assert len(decode._index_cache) == 2
    decode.forget_index(b)
    assert len(decode._index_cache) == 1 and decode._cached(a) is not None
    assert decode._cached(b) is None
    decode.forget_index(tmp_path / "missing.mp4")  # nothing cached under it: no error
    assert len(decode._index_cache) == 1


def test_a_local_shards_video_is_decoded_in_place_as_a_slice(tmp_path):
    """A local tar's video member is a VideoSlice: the member's bytes, read in place, giving
    the clips of the loose file; a remote shard (memory://) gives the same bytes in memory."""
    import fsspec
    import webdataset as wds

    from cpd.data.shards import iter_shard
    from cpd.video import VideoSlice, load_clip

    files = [write_video(tmp_path / f"v{i}.mp4", num_frames=30 + 6 * i) for i in range(2)]
    tar = tmp_path / "00000.tar"
    with wds.TarWriter(str(tar)) as sink:
        for i, f in enumerate(files):
            sink.write({"__key__": f"k{i}", "mp4": f.read_bytes(), "txt": b"a caption"})
    local = list(iter_shard(str(tar), 0))
    fsspec.filesystem("memory").pipe("/shards/00000.tar", tar.read_bytes())
    remote = list(iter_shard("memory://shards/00000.tar", 0))
    for sample, far, f in zip(local, remote, files, strict=True):
        source = sample.video_source(f"{tar}#{sample.key}")
        assert isinstance(source, VideoSlice) and source.name.endswith(sample.key)
        assert source.read() == f.read_bytes() == far.video()[1] == sample.video()[1]
        assert isinstance(far.video_source("x"), VideoBytes)
        for seed in range(3):
            got = load_clip(source, num_frames=4, stride=2, crop_size=32, train=True, seed=seed)
            want = load_clip(f, num_frames=4, stride=2, crop_size=32, train=True, seed=seed)
            assert torch.equal(got, want)
    gone = VideoSlice("gone#k0", str(tmp_path / "missing.tar"), 0, 10)
    with pytest.raises(VideoDecodeError, match="gone#k0"):
        decode.video_index(gone)
    with pytest.raises(VideoDecodeError, match="empty"):
        decode.video_index(VideoSlice("empty#k0", str(tar), 0, 0))
