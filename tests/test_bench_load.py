"""``cpd bench load`` runs end to end on a tiny file and prints sane JSON (no timing asserts)."""

import json
from pathlib import Path

import av
import pytest

from cpd.cli import main
from cpd.commands.bench import write_sample
from tests.videos import write_video


def test_bench_load_prints_one_json_line(tmp_path, capsys):
    path = write_video(tmp_path / "tiny.mp4", num_frames=60, width=160, height=96)
    assert main(["bench", "load", str(path), "--clips", "3", "--repeat", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    for key in (
        "clips_per_s",
        "decode_bound_clips_per_s",
        "official_clips_per_s",
        "cold_index_clips_per_s",
    ):
        assert out[key] > 0
    assert out["speedup_vs_official"] == pytest.approx(
        out["clips_per_s"] / out["official_clips_per_s"], rel=0.02
    )
    assert out["fraction_of_decode_bound"] == pytest.approx(
        out["clips_per_s"] / out["decode_bound_clips_per_s"], rel=0.02
    )
    # skipping non-reference frames decodes fewer frames than the plain bound on the same windows
    assert 8 <= out["frames_decoded_per_clip"] < out["decode_bound_frames_per_clip"]
    assert out["official_frames_decoded_per_clip"] >= 8
    assert out["threads"] == 1 and out["clips"] == 3 and out["videos"] == [str(path)]


def test_bench_needs_a_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["bench"])


def test_sample_is_h264_with_b_frames(tmp_path):
    path = write_sample(tmp_path / "s.mp4", width=160, height=68, seconds=1.0)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 160, 68)
        types = {av.video.frame.PictureType(f.pict_type).name for f in c.decode(stream)}
    assert types >= {"I", "P", "B"}


def test_bench_load_streams_the_same_clips_from_a_shard(tmp_path, capsys):
    videos = [str(write_video(tmp_path / f"v{i}.mp4", num_frames=60, width=160, height=96))
              for i in range(2)]  # fmt: skip
    assert main(["bench", "load", *videos, "--shards", "--clips", "4", "--repeat", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["shard_clips_per_s"] > 0
    assert out["shard_vs_files"] == pytest.approx(out["shard_clips_per_s"] / out["clips_per_s"],
                                                  rel=0.02)  # fmt: skip
    # one pass, so the ratios are those of the pass's rates
    assert out["shard_vs_files_cold_index"] == pytest.approx(
        out["shard_cold_index_clips_per_s"] / out["cold_index_clips_per_s"], rel=0.02
    )
    # a shard given directly: its videos are benched as files too
    from cpd.commands.bench import _pack

    tar = _pack(videos, tmp_path / "00000.tar", len(videos))
    assert main(["bench", "load", str(tar), "--clips", "4", "--repeat", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["shards"] == [str(tar)] and len(out["videos"]) == 2 and out["shard_clips_per_s"] > 0


def test_bench_load_with_files_and_a_shard_packs_them_all(tmp_path, capsys):
    from cpd.commands.bench import _pack

    videos = [str(write_video(tmp_path / f"v{i}.mp4", num_frames=60, width=160, height=96))
              for i in range(2)]  # fmt: skip
    tar = _pack(videos[:1], tmp_path / "00000.tar", 1)
    assert main(["bench", "load", videos[1], str(tar), "--clips", "4", "--repeat", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(out["videos"]) == 2 and out["shard_clips_per_s"] > 0


def test_packed_shard_holds_one_sample_per_clip_in_video_order(tmp_path):
    """A pass reads the packed shard forward once: sample k is video k % len(videos)."""
    from cpd.commands.bench import _pack
    from cpd.data.shards import iter_shard

    videos = [str(write_video(tmp_path / f"v{i}.mp4", num_frames=20 + 4 * i, width=64, height=48))
              for i in range(2)]  # fmt: skip
    tar = _pack(videos, tmp_path / "p.tar", 5)
    samples = list(iter_shard(str(tar), 0))
    assert [s.key for s in samples] == [f"{k:09d}" for k in range(5)]
    data = [Path(v).read_bytes() for v in videos]
    assert [s.video()[1] for s in samples] == [data[k % 2] for k in range(5)]
