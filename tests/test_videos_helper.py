"""The test helper's own round trip: an index written into a frame is read back."""

import av
import pytest

from tests.videos import index_frame, read_index, write_video


@pytest.mark.parametrize("index", [0, 1, 5, 255, 1000, 65535])
def test_index_roundtrip_in_memory(index):
    assert read_index(index_frame(index, 160, 96)) == index


@pytest.mark.parametrize(
    "suffix,codec",
    [(".mp4", "libx264"), (".avi", "mpeg4"), (".webm", "libvpx-vp9"), (".mkv", "libx264")],
)
def test_sequential_decode_reads_every_index(tmp_path, suffix, codec):
    path = write_video(tmp_path / f"v{suffix}", num_frames=30, codec=codec)
    with av.open(str(path)) as c:
        got = [read_index(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    assert got == list(range(30))
