"""Local shards are read through their member table: the same samples as a tar walk, the table
kept beside the index and reused, rebuilt when the tar changes."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile

import pytest

import cpd.data.shard_members as members
from cpd.data.shards import iter_shard, load_shard_index
from cpd.video import VideoSlice
from tests.shard_writer import write_v2d_shards


def samples(n: int, tag: str = "") -> list[dict]:
    return [{"video": bytes([i]) * (100 + i) + tag.encode(), "caption": f"caption {i}{tag}"}
            for i in range(n)]  # fmt: skip


def contents(raw) -> dict:
    """Every member of a sample as bytes (a video slice read whole)."""
    return {s: d.read() if isinstance(d, VideoSlice) else d for s, d in raw.members.items()}


@pytest.fixture(autouse=True)
def _forget_recent_tables():
    members._recent.clear()
    yield
    members._recent.clear()


def test_the_table_gives_what_the_streamed_tar_gives(tmp_path):
    """Names with a folder and an upper-case suffix, webdataset's metadata member, a sample
    without caption and a key met again later: the table reads as webdataset streams."""
    tar = tmp_path / "00000.tar"
    entries = [("__meta__.json", b"{}"), ("a/000.MP4", b"v0"), ("a/000.txt", b"zero"),
               ("a/000.json", b'{"caption": "zero"}'), ("a/001.mp4", b"v1"),
               ("a/002.mp4", b"v2"), ("a/002.json", b'{"caption": "two"}'),
               ("a/000.mp4", b"again"), ("a/000.txt", b"again")]  # fmt: skip
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    packed = tmp_path / "z" / "00000.tar"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(tar.read_bytes()))
    plain = list(iter_shard(str(tar), 0))
    streamed = list(iter_shard(str(packed), 0))  # webdataset's tar iterator
    assert [(r.position, r.key) for r in plain] == [(0, "a/000"), (1, "a/002"), (2, "a/000")]
    assert [(r.position, r.key) for r in streamed] == [(r.position, r.key) for r in plain]
    assert [contents(r) for r in plain] == [contents(r) for r in streamed]
    assert [r.caption() for r in plain] == ["zero", "two", "again"]
    assert isinstance(plain[0].members["mp4"], VideoSlice)


def test_the_table_is_kept_beside_the_index_and_reused(tmp_path, monkeypatch):
    out = tmp_path / "s"
    write_v2d_shards(out, samples(7), shard_size=4)
    index = load_shard_index(str(out))  # counts from the parquet: no table yet
    assert not (out / members.TABLE_DIR).exists()
    first = [contents(r) for s, u in enumerate(index.urls)
             for r in iter_shard(u, s, table_dirs=index.table_dirs)]  # fmt: skip
    kept = sorted(p.name for p in (out / members.TABLE_DIR).iterdir())
    assert [name.split("-")[0] for name in kept] == ["00000", "00001"]
    members._recent.clear()

    def no_walk(*args, **kwargs):
        raise AssertionError("the kept table should be used")

    monkeypatch.setattr(members, "build_table", no_walk)
    again = [contents(r) for s, u in enumerate(index.urls)
             for r in iter_shard(u, s, table_dirs=index.table_dirs)]  # fmt: skip
    assert again == first and len(again) == 7
    assert [json.loads(c["json"])["caption"] for c in again] == [f"caption {i}" for i in range(7)]


def test_a_scan_builds_the_table_and_a_rewritten_tar_gets_a_new_one(tmp_path):
    out = tmp_path / "s"
    (tar,) = write_v2d_shards(out, samples(3), shard_size=3, sidecars=False)
    index = load_shard_index(str(out))
    assert index.counts == [3] and index.sources == ["scan"]
    assert len(list((out / members.TABLE_DIR).iterdir())) == 1  # the scan's walk, kept
    before = [r.caption() for r in iter_shard(str(tar), 0, table_dirs=index.table_dirs)]
    write_v2d_shards(out, samples(2, tag="-new"), shard_size=3, sidecars=False)
    os.utime(tar, ns=(1, 1))  # a rewrite within the same clock tick still changes the stat
    after = [contents(r) for r in iter_shard(str(tar), 0, table_dirs=index.table_dirs)]
    assert before == ["caption 0", "caption 1", "caption 2"]
    assert [c["txt"] for c in after] == [b"caption 0-new", b"caption 1-new"]
    assert [c["mp4"] for c in after] == [s["video"] for s in samples(2, tag="-new")]


def test_an_unreadable_table_is_rebuilt(tmp_path, caplog):
    out = tmp_path / "s"
    (tar,) = write_v2d_shards(out, samples(2), shard_size=2)
    dirs = [str(out)]
    list(iter_shard(str(tar), 0, table_dirs=dirs))
    (table,) = (out / members.TABLE_DIR).iterdir()
    table.write_text("{not json")
    members._recent.clear()
    assert [r.key for r in iter_shard(str(tar), 0, table_dirs=dirs)] == ["000000000", "000000001"]
    assert "unreadable member table" in caplog.text
    assert json.loads(table.read_text())["samples"][0][0] == "000000000"  # written anew
