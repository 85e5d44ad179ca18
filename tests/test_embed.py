"""`cpd embed`'s files: ids in a sidecar, a header that does not grow with the ids, rows written
a batch at a time at their positions, the output checked before any video is decoded, and
several processes writing what one process writes."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tracemalloc
import weakref

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from cpd import dist
from cpd.errors import DataError
from cpd.eval.common import EvalEnv
from cpd.eval.embed import (
    EmbeddingChunk,
    EmbeddingWriter,
    read_embeddings,
    stream_embeddings,
    write_embeddings,
)
from tests.test_eval_cli import ONE_VIEW, cli, make_classifier

ENV = EvalEnv(torch.device("cpu"), rank=0, world_size=1, owns_group=False, show_progress=False)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> str:
    return make_classifier(tmp_path_factory.mktemp("cls") / "export")


def _sidecar(path) -> list[str]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _header_bytes(path) -> int:
    with open(path, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0]


@pytest.mark.parametrize("fmt", ["npy", "safetensors"])
def test_ids_come_back_in_row_order(fmt, tmp_path):
    rng = np.random.default_rng(0)
    values = rng.standard_normal((7, 3)).astype(np.float32)
    keys = ["k0", "k1", "path/with\nnewline", "k3", "k4", "ünï", "k6"]
    with EmbeddingWriter(tmp_path, "videos", dim=3, capacity=7, fmt=fmt) as writer:
        for rows in ([5, 1], [6, 0, 2], [1, 3]):  # any order; row 1 twice (padding); 4 never
            writer.write(rows, values[rows], [keys[r] for r in rows])
        got = writer.close()
    kept = [0, 1, 2, 3, 5, 6]
    assert (got.count, got.dim, got.missing) == (6, 3, [4])
    assert got.files == [tmp_path / f"videos.{fmt}", tmp_path / "videos_ids.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in got.files)
    assert _sidecar(got.ids) == [keys[r] for r in kept]
    for mmap in (False, True):
        emb, ids = read_embeddings(got.data, mmap=mmap)
        assert ids == [keys[r] for r in kept] and np.array_equal(emb, values[kept])
    if fmt == "npy":
        assert np.array_equal(np.load(got.data), values[kept])
    else:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        assert np.array_equal(load_file(str(got.data))["embeddings"], values[kept])
        with safe_open(str(got.data), "np") as f:
            meta = f.metadata()
        assert meta == {"count": "6", "dim": "3", "ids_file": "videos_ids.jsonl"}


@pytest.mark.parametrize("fmt", ["npy", "safetensors"])
def test_gaps_are_squeezed_out_a_few_rows_at_a_time(fmt, tmp_path, monkeypatch):
    import cpd.eval.embed as embed

    monkeypatch.setattr(embed, "_COPY_BYTES", 3 * 4 * 5)  # 3 rows of 5 floats per move
    values = np.arange(50 * 5, dtype=np.float32).reshape(50, 5)
    come = [r for r in range(50) if r % 7 not in (2, 3) and r not in (0, 49)]
    ids = [f"id{r}" for r in range(50)]
    with EmbeddingWriter(tmp_path, "texts", dim=5, capacity=50, fmt=fmt, ids=ids) as writer:
        writer.write(come[::-1], values[come[::-1]])
        got = writer.close()
    emb, back = read_embeddings(got.data)
    assert np.array_equal(emb, values[come]) and back == [ids[r] for r in come]
    assert got.missing == sorted(set(range(50)) - set(come))


def test_the_header_does_not_grow_with_the_ids(tmp_path):
    """200k ids of 40 characters: 8.6 MB of header when the ids were in it (and 100 MB, the
    readers' limit, at 2.5 million); a few hundred bytes whatever their number now."""
    n, dim = 200_000, 2
    ids = [f"videos/class_{i % 101:03d}/clip_{i:08d}_xx.mp4" for i in range(n)]
    emb = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    with EmbeddingWriter(tmp_path / "big", "videos", dim=dim, capacity=n, fmt="safetensors",
                         ids=ids, metadata={"model": "/runs/x/export"}) as writer:  # fmt: skip
        for start in range(0, n, 50_000):
            writer.write(np.arange(start, start + 50_000), emb[start : start + 50_000])
        big = writer.close()
    small = write_embeddings(tmp_path / "small", "videos", emb[:1], ids[:1], "safetensors",
                             metadata={"model": "/runs/x/export"})  # fmt: skip
    assert len(json.dumps(ids)) > 8_000_000  # what the header used to hold
    assert _header_bytes(big.data) < 256
    assert _header_bytes(big.data) - _header_bytes(small[0]) <= 16  # the count's digits
    back, back_ids = read_embeddings(big.data, mmap=True)
    assert back_ids == ids and np.array_equal(back, emb)


def test_the_writer_never_holds_more_than_the_batch_it_is_given(tmp_path):
    chunk_rows, chunks, dim = 1_000, 100, 64
    ids = [str(i) for i in range(chunk_rows * chunks)]
    with EmbeddingWriter(tmp_path, "videos", dim=dim, capacity=len(ids), ids=ids) as writer:
        tracemalloc.start()
        try:
            for k in range(chunks):
                rows = np.arange(k * chunk_rows, (k + 1) * chunk_rows)
                writer.write(rows, np.full((chunk_rows, dim), k, dtype=np.float32))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        got = writer.close()
    chunk_bytes = chunk_rows * dim * 4
    assert got.data.stat().st_size > 90 * chunk_bytes  # 25.6 MB on disk ...
    assert peak < 4 * chunk_bytes  # ... through a few chunks' worth of memory
    emb = np.load(got.data, mmap_mode="r")
    assert emb[0, 0] == 0 and emb[-1, -1] == chunks - 1


def test_the_stream_lets_go_of_each_chunk_before_the_next(tmp_path):
    alive: list[int] = []
    refs: list[weakref.ref] = []

    def chunks():
        for k in range(6):
            alive.append(sum(r() is not None for r in refs))
            values = torch.full((3, 4), float(k), dtype=torch.float64)
            refs.append(weakref.ref(values))
            yield EmbeddingChunk(torch.arange(3 * k, 3 * k + 3), {"videos": values},
                                 ids=[f"s{3 * k + j}" for j in range(3)])  # fmt: skip
            del values

    with EmbeddingWriter(tmp_path, "videos", dim=4, capacity=18) as writer:
        assert stream_embeddings(chunks(), ENV, {"videos": writer}, {"videos": 4}) == {}
        got = writer.close()
    assert alive == [0] * 6
    emb, ids = read_embeddings(got.data)
    assert ids == [f"s{i}" for i in range(18)] and np.array_equal(emb[:, 0], np.arange(18) // 3)


def test_duplicate_ids_are_refused_before_any_row(tmp_path):
    with pytest.raises(DataError, match=r"duplicate id 'a' at row 2, first at row 0"):
        EmbeddingWriter(tmp_path / "out", "videos", dim=2, capacity=3, ids=["a", "b", "a"])
    assert not (tmp_path / "out").exists()

    where = {0: "x.tar, sample 0", 1: "x.tar, sample 1", 2: "y.tar, sample 0"}.__getitem__
    with EmbeddingWriter(tmp_path / "out", "videos", dim=2, capacity=3, where=where) as writer:
        writer.write([0, 1], np.zeros((2, 2)), ["a", "b"])
        with pytest.raises(DataError, match=r"'a' at y.tar, sample 0, first at x.tar, sample 0"):
            writer.write([2], np.ones((1, 2)), ["a"])
    assert list((tmp_path / "out").iterdir()) == []  # the partial file went with the error

    # a manifest's ids name the video of each caption: repeats are allowed there
    files = write_embeddings(tmp_path / "texts", "texts", np.eye(3), ["v1", "v1", "v2"])
    assert read_embeddings(files[0])[1] == ["v1", "v1", "v2"]


def test_files_of_older_releases_are_read(tmp_path):
    from safetensors.numpy import save_file

    emb = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.save(tmp_path / "videos.npy", emb)
    (tmp_path / "videos_ids.json").write_text(json.dumps(["a", "b", "c"]))
    got, ids = read_embeddings(tmp_path / "videos.npy")
    assert ids == ["a", "b", "c"] and np.array_equal(got, emb)
    save_file({"embeddings": emb}, str(tmp_path / "texts.safetensors"),
              metadata={"ids": json.dumps(["1", "2", "3"])})  # fmt: skip
    got, ids = read_embeddings(tmp_path / "texts.safetensors")
    assert ids == ["1", "2", "3"] and np.array_equal(got, emb)
    (tmp_path / "videos_ids.json").write_text(json.dumps(["a"]))
    with pytest.raises(DataError, match="3 rows but 1 ids"):
        read_embeddings(tmp_path / "videos.npy")


def test_the_output_is_checked_before_any_video_is_decoded(
    classifier, tiny_synthetic, tmp_path, monkeypatch, capsys
):
    decoded = []

    def load_clips(*args, **kwargs):
        decoded.append(args)
        raise AssertionError("decoded")

    monkeypatch.setattr("cpd.video.load_clips", load_clips)
    (tmp_path / "file").write_text("")
    pattern = str(tiny_synthetic / "videos" / "Moving*" / "*.mp4")
    argv = [classifier, "--videos", pattern, "--out", str(tmp_path / "file" / "emb"), *ONE_VIEW]
    assert cli("embed", argv) == 2
    assert "cannot write the embeddings" in capsys.readouterr().err and decoded == []


def test_duplicate_shard_keys_are_named_with_their_shards(classifier, tiny_synthetic, tmp_path,
                                                         capsys):  # fmt: skip
    from tests.shard_writer import write_v2d_shards

    rows = [json.loads(x) for x in (tiny_synthetic / "captions.jsonl").read_text().splitlines()]
    samples = [{"video": (tiny_synthetic / r["video"]).read_bytes(), "caption": r["caption"]}
               for r in rows[:2]]  # fmt: skip
    write_v2d_shards(tmp_path / "one", samples, shard_size=2)
    shards = tmp_path / "shards"
    shards.mkdir()
    for name in ("00000", "00001"):  # the same shard twice: the same keys twice
        for suffix in (".tar", ".parquet", "_stats.json"):
            shutil.copy(tmp_path / "one" / f"00000{suffix}", shards / f"{name}{suffix}")
    out = tmp_path / "emb"
    argv = [classifier, "--shards", str(shards), "--out", str(out), *ONE_VIEW]
    assert cli("embed", argv) == 2
    err = capsys.readouterr().err
    assert "duplicate id '000000000' at " in err
    assert "00001.tar, sample 0, first at " in err and "00000.tar, sample 0" in err
    assert not any(p.suffix in (".npy", ".partial", ".jsonl") for p in out.iterdir())


# --- several processes -----------------------------------------------------------------------

WORLD = 2


def _stream_worker(rank: int, port: int, out: str, duplicate: bool) -> None:
    """Rank 0 makes three chunks, rank 1 one: rows of both ranks interleave and rank 1 finishes
    first. With ``duplicate`` rank 1 brings an id rank 0 already brought."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))  # fmt: skip
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        env = EvalEnv(torch.device("cpu"), rank=rank, world_size=WORLD, owns_group=True,
                      show_progress=False)  # fmt: skip
        parts = [[0, 1], [4, 5], [6]] if rank == 0 else [[3, 2]]
        failed = [] if rank == 0 else [(7, "bad.mp4", "garbage")]
        chunks = [EmbeddingChunk(torch.tensor(rows), {"videos": torch.tensor(rows).double()
                                                      .view(-1, 1).repeat(1, 2)},
                                 ids=[f"id{r}" for r in rows], failed=failed if i == 0 else [])
                  for i, rows in enumerate(parts)]  # fmt: skip
        if duplicate and rank == 1:
            chunks[0].ids = ["id3", "id0"]
        writers = None
        if rank == 0:
            writers = {"videos": EmbeddingWriter(out, "videos", dim=2, capacity=8)}
        try:
            failures = stream_embeddings(iter(chunks), env, writers, {"videos": 2})
        except DataError as exc:
            with open(os.path.join(out, f"error{rank}.txt"), "w") as f:
                f.write(str(exc))
            if writers:
                writers["videos"].abort()
            return
        if rank == 0:
            got = writers["videos"].close()
            with open(os.path.join(out, "result.json"), "w") as f:
                json.dump({"failed": sorted(failures), "missing": got.missing}, f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.dist
def test_two_processes_write_every_row_at_its_place(tmp_path):
    mp.spawn(_stream_worker, args=(dist.find_free_port(), str(tmp_path), False), nprocs=WORLD)
    emb, ids = read_embeddings(tmp_path / "videos.npy")
    assert ids == [f"id{r}" for r in range(7)] and np.array_equal(emb[:, 0], np.arange(7))
    assert json.loads((tmp_path / "result.json").read_text()) == {"failed": [7], "missing": [7]}


@pytest.mark.dist
def test_a_duplicate_found_on_rank_0_stops_both_processes(tmp_path):
    mp.spawn(_stream_worker, args=(dist.find_free_port(), str(tmp_path), True), nprocs=WORLD)
    for rank in range(WORLD):
        assert (
            "duplicate id 'id0' at row 2, first at row 0"
            in (tmp_path / f"error{rank}.txt").read_text()
        )
    assert not (tmp_path / "videos.npy").exists() and not (tmp_path / "videos.npy.partial").exists()


def _cli_worker(rank: int, port: int, argv: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))  # fmt: skip
    torch.set_num_threads(1)
    if cli("embed", argv) != 0:
        raise RuntimeError(f"rank {rank}: cpd embed failed")


@pytest.mark.dist
def test_cpd_embed_in_two_processes_writes_the_one_process_files(
    classifier, tiny_synthetic, tmp_path
):
    """Five videos, one undecodable, two per batch: rank 1 repeats video 0 as the sampler's
    padding, which must be written once."""
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 10)
    videos = sorted((tiny_synthetic / "videos").glob("Moving*/*.mp4"))[:4]
    listing = tmp_path / "videos.txt"
    listing.write_text("".join(f"{p}\n" for p in [videos[0], bad, *videos[1:]]))
    argv = [classifier, "--videos", str(listing), "--batch-size", "4", "--format", "safetensors",
            *ONE_VIEW]  # fmt: skip
    two, one = tmp_path / "two", tmp_path / "one"
    mp.spawn(_cli_worker, args=(dist.find_free_port(), [*argv, "--out", str(two)]), nprocs=WORLD)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic as the workers
    try:
        assert cli("embed", [*argv, "--out", str(one)]) == 0
    finally:
        torch.set_num_threads(threads)
    emb2, ids2 = read_embeddings(two / "videos.safetensors")
    emb1, ids1 = read_embeddings(one / "videos.safetensors")
    assert ids2 == ids1 == [str(p) for p in [videos[0], *videos[1:]]]
    assert np.array_equal(emb2, emb1)
    results = json.loads((two / "results.json").read_text())
    assert results["world_size"] == 2 and results["num"] == 4 and results["num_failed"] == 1
    assert results["failed"][0]["path"] == str(bad)
