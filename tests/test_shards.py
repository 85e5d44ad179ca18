"""Shards: specs, the index, stable rows, the epoch plan, resume and bad samples (fake clips)."""

from __future__ import annotations

import os
import tarfile
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from cpd.data.datasets import collate
from cpd.data.shards import expand_shards, iter_shard, load_shard_index, scan_shard
from cpd.data.stream import ShardDataset, plan_epoch, resume_assignment
from cpd.errors import DataError, VideoDecodeError
from cpd.video import VideoSlice
from tests.shard_writer import write_v2d_shards


def fake_clip(source, **kwargs) -> torch.Tensor:
    """A stand-in for load_clip: the video bytes' first byte, no decoding (a local shard's
    video comes as a slice of the tar, a remote one's as bytes)."""
    data = source.read() if isinstance(source, VideoSlice) else source.data
    if data.startswith(b"BAD"):
        raise VideoDecodeError(source.name, "undecodable test bytes")
    return torch.full((1,), float(data[0]))


def make_samples(n: int) -> list[dict]:
    return [{"video": bytes([i % 256]) + b"video", "caption": f"caption {i}"} for i in range(n)]


@pytest.fixture()
def shards(tmp_path):
    out = tmp_path / "shards"
    write_v2d_shards(out, make_samples(23), shard_size=5)  # 5 shards: 5, 5, 5, 5, 3
    return out


class FakeTokenizer:
    """Enough of a tokenizer for the stream (the slow path: ``__call__``)."""

    is_fast = False

    def __call__(self, text, **kw):
        n = kw["max_length"]
        ids = torch.zeros(1, n, dtype=torch.long)
        ids[0, 0] = len(text)
        return {"input_ids": ids, "attention_mask": torch.ones(1, n, dtype=torch.long)}


def dataset(index, train=True, **kw) -> ShardDataset:
    return ShardDataset(index, FakeTokenizer(), train=train, loader=fake_clip, max_tokens=4,
                        buffer=kw.pop("buffer", 4), **kw)  # fmt: skip


def rows_of(loader) -> list[list[int]]:
    return [batch["index"].tolist() for batch in loader]


def test_specs_name_the_same_shards(shards, tmp_path):
    tars = sorted(str(p) for p in shards.glob("*.tar"))
    assert expand_shards(str(shards)) == tars
    assert expand_shards(f"{shards}/{{00000..00004}}.tar") == tars
    assert expand_shards(f"file://{shards}/{{00000..00001}}.tar") == tars[:2]
    with pytest.raises(DataError, match="5 shard.*00005.tar, .*00009.tar"):
        expand_shards(f"{shards}/{{00000..00009}}.tar")


def test_index_from_sidecars_equals_scan_and_is_kept(shards):
    from_sidecars = load_shard_index(str(shards))
    assert from_sidecars.counts == [5, 5, 5, 5, 3] and set(from_sidecars.sources) == {"parquet"}
    scanned = load_shard_index(str(shards), scan=True)
    assert scanned.counts == from_sidecars.counts and set(scanned.sources) == {"scan"}
    assert (shards / "cpd-index.json").is_file()
    # a shard rewritten since: its entry is stale and is counted again
    tar = shards / "00004.tar"
    os.utime(tar, ns=(1, 1))
    assert load_shard_index(str(shards)).counts[4] == 3


def test_incomplete_and_failed_samples_take_no_row(tmp_path):
    samples = make_samples(6)
    samples[1]["video"] = None  # failed download: not in the tar, listed in the parquet
    samples[3].update(txt=False, json=False)  # video without caption
    write_v2d_shards(tmp_path / "s", samples, shard_size=6, sidecars=False)
    tar = str(tmp_path / "s" / "00000.tar")
    assert scan_shard(tar) == 4
    got = [(r.position, r.key, r.caption()) for r in iter_shard(tar, 0)]
    assert got == [(0, "000000000", "caption 0"), (1, "000000002", "caption 2"),
                   (2, "000000004", "caption 4"), (3, "000000005", "caption 5")]  # fmt: skip


def test_evaluation_gives_every_row_once_with_stable_keys(shards):
    index = load_shard_index(str(shards))
    ds = dataset(index, train=False)
    for world in (1, 2, 3):
        seen = []
        for rank in range(world):
            ds.configure(epoch=0, rank=rank, world_size=world, workers=2, batch_size=4)
            loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
            for batch in loader:
                seen += list(zip(batch["index"].tolist(), batch["key"], strict=True))
        assert sorted(seen) == [(r, f"{r // 5:05d}{r % 5:04d}") for r in range(23)]


@pytest.mark.parametrize("world,workers,batch", [(1, 1, 4), (2, 3, 2), (3, 2, 3)])
def test_training_plan_partitions_the_epoch(shards, world, workers, batch):
    index = load_shard_index(str(shards))
    rows = []
    for rank in range(world):
        plans = plan_epoch(index, seed=3, epoch=1, rank=rank, world_size=world,
                           workers=workers, batch_size=batch, train=True, buffer=4)  # fmt: skip
        steps = sum(p.num_batches for p in plans.values())
        assert steps == (23 // world) // batch  # the same steps on every rank
        for plan in plans.values():
            assert sorted(plan.order) == list(range(plan.size))
            assert plan.size == plan.num_batches * batch  # full batches only
            for seg in plan.segments:
                rows += [index.row(seg.shard, p) for p in range(seg.first, seg.stop)]
    assert len(rows) == len(set(rows)) == world * ((23 // world) // batch) * batch


def test_order_is_a_function_of_seed_and_epoch(shards):
    index = load_shard_index(str(shards))
    ds = dataset(index)

    def epoch_rows(seed: int, epoch: int) -> list[list[int]]:
        ds.seed = seed
        ds.configure(epoch=epoch, rank=0, world_size=1, workers=2, batch_size=3)
        return rows_of(DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate))

    first = epoch_rows(0, 0)
    assert epoch_rows(0, 0) == first
    assert epoch_rows(0, 1) != first and epoch_rows(1, 0) != first
    flat = [r for b in first for r in b]
    assert len(flat) == len(set(flat)) == 21  # 7 full batches of 3 from 23 rows


@pytest.mark.parametrize("workers,skip", [(0, 3), (2, 1), (2, 4), (3, 5)])
def test_mid_epoch_resume_continues_without_replay(shards, workers, skip):
    index = load_shard_index(str(shards))
    ds = dataset(index)
    ds.configure(epoch=2, rank=0, world_size=1, workers=workers, batch_size=2)
    full = rows_of(DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate))
    ds.configure(epoch=2, rank=0, world_size=1, workers=workers, batch_size=2, skip_batches=skip)
    rest = rows_of(DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate))
    assert rest == full[skip:]


def test_resume_assignment_follows_the_turn_order():
    # workers with 3, 3 and 2 batches: turns give 00 10 20 01 11 21 02 12
    assert resume_assignment([3, 3, 2], 0) == [[(0, 0), (0, 1), (0, 2)], [(1, 0), (1, 1), (1, 2)],
                                               [(2, 0), (2, 1)]]  # fmt: skip
    assert resume_assignment([3, 3, 2], 4) == [[(1, 1), (1, 2)], [(2, 1)], [(0, 2)]]


def test_bad_samples_are_replaced_counted_and_keep_batch_counts(tmp_path):
    samples = make_samples(12)
    samples[4]["video"] = b"BAD bytes"
    write_v2d_shards(tmp_path / "s", samples, shard_size=6)
    index = load_shard_index(str(tmp_path / "s"))
    ds = dataset(index, max_failure_ratio=0.5)
    ds.configure(epoch=0, rank=0, world_size=1, workers=0, batch_size=3)
    batches = rows_of(DataLoader(ds, batch_size=3, collate_fn=collate))
    flat = [r for b in batches for r in b]
    assert len(batches) == 4 and 4 not in flat
    assert Counter(flat).most_common(1)[0][1] == 2  # one good sample stands in twice
    assert list(ds.policy.failed) == [f"{tmp_path / 's' / '00000.tar'}#000000004"]


def test_truncated_shard_is_reported_and_replaced(tmp_path, caplog):
    write_v2d_shards(tmp_path / "s", make_samples(8), shard_size=4)
    index = load_shard_index(str(tmp_path / "s"))
    tar = tmp_path / "s" / "00001.tar"
    with tarfile.open(tar) as t:
        cut = t.getmember("000010002.mp4").offset_data  # the third sample's video is cut
    with open(tar, "r+b") as f:
        f.truncate(cut + 2)
    ds = dataset(index, train=False)
    ds.configure(epoch=0, rank=0, world_size=1, workers=0, batch_size=8)
    rows = [r for b in rows_of(DataLoader(ds, batch_size=8, collate_fn=collate)) for r in b]
    assert rows == [0, 1, 2, 3, 4, 5]
    assert sorted(r for r, _ in ds.skipped) == [6, 7]
    assert "ends early" in caplog.text and "00001.tar" in caplog.text
    train = dataset(index, max_failure_ratio=0.5)
    train.configure(epoch=0, rank=0, world_size=1, workers=0, batch_size=4)
    batches = rows_of(DataLoader(train, batch_size=4, collate_fn=collate))
    assert len(batches) == 2 and all(len(b) == 4 for b in batches)


def test_missing_shard_is_an_error_naming_it(shards):
    (shards / "00002.tar").unlink()
    with pytest.raises(DataError, match="00002.tar"):
        load_shard_index(f"{shards}/{{00000..00004}}.tar")


def test_fsspec_urls_read_like_local_shards(shards, tmp_path):
    """An fsspec filesystem other than the local one (memory://) stands for s3:// or gs://:
    listing, sidecar counts, sequential reads, and the index kept in the given directory."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for path in sorted(shards.iterdir()):
        if path.suffix in (".tar", ".parquet"):
            fs.pipe(f"/corpus/{path.name}", path.read_bytes())
    try:
        index = load_shard_index("memory://corpus", [tmp_path / "run"])
        assert index.counts == [5, 5, 5, 5, 3] and set(index.sources) == {"parquet"}
        assert index.urls[0].startswith("memory://") and index.urls[0].endswith("/00000.tar")
        assert (tmp_path / "run" / "cpd-index.json").is_file()
        ds = dataset(index, train=False)
        ds.configure(epoch=0, rank=0, world_size=1, workers=0, batch_size=5)
        rows = [r for b in rows_of(DataLoader(ds, batch_size=5, collate_fn=collate)) for r in b]
        assert rows == list(range(23))
        fs.rm("/corpus/00003.parquet")  # no sidecar: the tar's headers are scanned
        assert load_shard_index("memory://corpus/{00003..00004}.tar", scan=False).counts == [5, 3]
    finally:
        fs.rm("/corpus", recursive=True)


def test_a_sample_that_never_comes_does_not_pull_the_part_into_memory(tmp_path, monkeypatch):
    import cpd.data.stream as stream

    samples = make_samples(200)
    for i in range(10, 20):  # parquet says success, the tar has no caption: 10 rows never come
        samples[i].update(txt=False, json=False)
    write_v2d_shards(tmp_path / "s", samples, shard_size=50)
    index = load_shard_index(str(tmp_path / "s"))
    assert index.counts[0] == 50  # from the parquet; the tar holds 40 complete samples
    counts = {"read": 0, "loaded": 0, "ahead": 0}
    real_iter = stream.iter_shard

    def counting_iter(*args, **kwargs):
        for raw in real_iter(*args, **kwargs):
            counts["read"] += 1
            counts["ahead"] = max(counts["ahead"], counts["read"] - counts["loaded"])
            yield raw

    def counting_clip(source, **kwargs):
        counts["loaded"] += 1
        return fake_clip(source, **kwargs)

    monkeypatch.setattr(stream, "iter_shard", counting_iter)
    for train in (False, True):
        counts.update(read=0, loaded=0, ahead=0)
        ds = ShardDataset(index, FakeTokenizer(), train=train, loader=counting_clip,
                          max_tokens=4, buffer=4, max_failure_ratio=0.5)  # fmt: skip
        ds.configure(epoch=0, rank=0, world_size=1, workers=0, batch_size=5)
        rows_of(DataLoader(ds, batch_size=5, collate_fn=collate))
        assert counts["ahead"] <= 6, (train, counts)  # the buffer, not the rest of the part


def test_a_read_error_keeps_the_samples_read_whole(tmp_path, caplog):
    write_v2d_shards(tmp_path / "s", make_samples(6), shard_size=6)
    tar = tmp_path / "s" / "00000.tar"
    with tarfile.open(tar) as t:
        cut = t.getmember("000000003.json").offset_data  # the 4th sample's first member
    with open(tar, "r+b") as f:
        f.truncate(cut + 1)
    got = [r.position for r in iter_shard(str(tar), 0, on_error=lambda m: None)]
    assert got == [0, 1, 2] and scan_shard(str(tar)) >= 3


def test_replacements_never_join_their_own_batch(tmp_path):
    samples = make_samples(24)
    for i in (1, 2, 5, 9, 13, 14):
        samples[i]["video"] = b"BAD" + bytes([i])
    write_v2d_shards(tmp_path / "s", samples, shard_size=8)
    index = load_shard_index(str(tmp_path / "s"))
    ds = dataset(index, max_failure_ratio=0.9, buffer=6)
    for epoch in range(6):
        ds.configure(epoch=epoch, rank=0, world_size=1, workers=0, batch_size=4)
        for batch in rows_of(DataLoader(ds, batch_size=4, collate_fn=collate)):
            assert len(set(batch)) == len(batch), (epoch, batch)


def test_index_file_keeps_the_entries_of_other_specs(shards):
    load_shard_index(f"{shards}/{{00000..00001}}.tar")
    load_shard_index(f"{shards}/{{00002..00004}}.tar")
    import json

    entries = json.loads((shards / "cpd-index.json").read_text())["shards"]
    assert sorted(e["url"].rsplit("/", 1)[1] for e in entries) == [f"{i:05d}.tar" for i in range(5)]


def test_a_missing_url_shard_is_named(shards):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/corpus2/00000.tar", (shards / "00000.tar").read_bytes())
    try:
        with pytest.raises(DataError, match="1 shard.*00001.tar"):
            expand_shards("memory://corpus2/{00000..00001}.tar")
    finally:
        fs.rm("/corpus2", recursive=True)


def test_brace_patterns_survive_key_value_overrides():
    from cpd.train.config import load_pretrain_config

    cfg = load_pretrain_config(None, ["data.shards={00000..00009}.tar",
                                      "data.val_shards=s3://b/{a,b}.tar"])  # fmt: skip
    assert cfg.data.shards == "{00000..00009}.tar" and cfg.data.val_shards == "s3://b/{a,b}.tar"
    assert load_pretrain_config(None, ["data.shards=null"]).data.shards is None


def test_a_compressed_local_shard_is_streamed(tmp_path):
    """A gzipped tar has no byte range per member to decode in place: it streams, as a remote
    shard does, and gives the samples of the plain tar."""
    import gzip

    (plain,) = write_v2d_shards(tmp_path / "s", make_samples(3), shard_size=3)
    packed = tmp_path / "z" / "00000.tar"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    got = list(iter_shard(str(packed), 0))
    want = list(iter_shard(str(plain), 0))
    assert [s.key for s in got] == [s.key for s in want] == ["000000000", "000000001", "000000002"]
    assert [s.video()[1] for s in got] == [s.video()[1] for s in want]
    assert isinstance(got[0].members["mp4"], bytes)  # streamed: read whole
    assert isinstance(want[0].members["mp4"], VideoSlice)  # in place
    assert scan_shard(str(packed)) == scan_shard(str(plain)) == 3  # counted without sidecars
