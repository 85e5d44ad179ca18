"""`cpd pretrain data.shards=DIR` on shards in video2dataset's layout written without cpd: NCE
and InfoNCE, the frame cache, a mid-epoch resume, two gloo processes, and the clip a shard row
gives equal to the manifest's for the same row."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

import cpd
from cpd import dist
from cpd.data import VideoCaptionDataset, read_caption_manifest
from cpd.data.shards import load_shard_index
from cpd.data.stream import ShardDataset
from cpd.train import pretrain as engine
from cpd.train.checkpoint import read_checkpoint
from cpd.train.config import load_pretrain_config
from cpd.train.pretrain import TrainingInterrupted, pretrain
from cpd.train.state import StopSignal
from tests.shard_writer import write_v2d_shards


@pytest.fixture(scope="module")
def synth_shards(tiny_synthetic, tmp_path_factory):
    """The tiny synthetic set's train pairs as 3 shards (5, 5, 2) and val pairs as one."""
    out = tmp_path_factory.mktemp("synth_shards")
    rows = [json.loads(x) for x in (tiny_synthetic / "captions.jsonl").read_text().splitlines()]
    for split, folder, size in (("train", "train", 5), ("val", "val", 10)):
        samples = [{"video": (tiny_synthetic / r["video"]).read_bytes(), "caption": r["caption"]}
                   for r in rows if r["split"] == split]  # fmt: skip
        write_v2d_shards(out / folder, samples, shard_size=size)
    return out


def _overrides(base, shards, run_dir, *extra):
    """Streaming from the shards (the CPU preset would otherwise decode them into its cache)."""
    return [*base, "data.manifest=", f"data.shards={shards / 'train'}",
            f"data.val_shards={shards / 'val'}", "data.cache_frames=false", f"run.out={run_dir}",
            *extra]  # fmt: skip


def _steps(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "step"]


@pytest.mark.parametrize("loss,cache", [("nce", False), ("infonce", False), ("nce", True),
                                        ("infonce", True)])  # fmt: skip
def test_pretrain_on_shards_exports_a_model(
    tiny_pretrain_overrides, synth_shards, tmp_path, loss, cache
):
    run_dir = tmp_path / "run"
    cfg = load_pretrain_config("pretrain_synthetic_cpu", _overrides(
        tiny_pretrain_overrides, synth_shards, run_dir, f"loss.kind={loss}",
        f"data.cache_frames={str(cache).lower()}"))  # fmt: skip
    results = pretrain(cfg)
    assert [s["global_step"] for s in _steps(run_dir)] == list(range(1, 7))  # 12 pairs, batch 4
    assert results["final"]["val_t2v_num_queries"] == 4
    model = cpd.load_model(run_dir / "export")
    assert model.encode_text(["a red heart"]).shape == (1, 16)
    if loss == "nce":
        bank = read_checkpoint(run_dir / "last.pt")["loss"]
        assert next(v for k, v in bank.items() if "memory" in k).shape[0] == 12


def test_frame_cache_from_shards(tiny_pretrain_overrides, synth_shards, tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_pretrain_config("pretrain_synthetic_cpu", _overrides(
        tiny_pretrain_overrides, synth_shards, run_dir, "data.cache_frames=true",
        "schedule.epochs=1"))  # fmt: skip
    data = engine.build_data(cfg.data, None, seed=0, val=True, progress=False)
    assert len(data.train) == 12 and len(data.train.loader) == 16  # every video decoded once
    pretrain(cfg)
    assert (run_dir / "export" / "model.safetensors").is_file()


def test_shard_rows_give_the_manifest_clips(tiny_synthetic, synth_shards):
    records = read_caption_manifest(tiny_synthetic / "captions.jsonl", tiny_synthetic, "train")
    index = load_shard_index(str(synth_shards / "train"))
    for train, official in ((True, False), (False, False), (False, True)):
        args = dict(num_frames=4, stride=2, crop_size=32, train=train, seed=5, hflip=0.5,
                    official_tokens=official, max_tokens=6)  # fmt: skip
        manifest = VideoCaptionDataset(records, None, **args)
        stream = ShardDataset(index, manifest.tokenizer, buffer=1, **args)
        manifest.set_epoch(3)
        stream.configure(epoch=3, rank=0, world_size=1, workers=1, batch_size=4)
        got = list(stream)
        assert len(got) == 12
        for sample in got:
            want = manifest[sample["index"]]
            assert torch.equal(sample["video"], want["video"])
            assert torch.equal(sample["input_ids"], want["input_ids"])
            assert sample["caption"] == want["caption"]


def test_mid_epoch_resume_on_shards_repeats_the_losses(
    tiny_pretrain_overrides, synth_shards, tmp_path, monkeypatch
):
    extra = ["run.val_every=0", "data.workers=2", "loss.kind=nce"]
    straight = tmp_path / "straight"
    pretrain(load_pretrain_config("pretrain_synthetic_cpu", _overrides(
        tiny_pretrain_overrides, synth_shards, straight, *extra)))  # fmt: skip
    resumed = tmp_path / "resumed"
    real, calls = StopSignal.should_stop, {"n": 0}

    def stop_after_four(self, device):
        real(self, device)
        calls["n"] += 1
        return calls["n"] == 4  # epoch 2, step 1 of 3

    monkeypatch.setattr(StopSignal, "should_stop", stop_after_four)
    cfg = load_pretrain_config("pretrain_synthetic_cpu", _overrides(
        tiny_pretrain_overrides, synth_shards, resumed, *extra))  # fmt: skip
    with pytest.raises(TrainingInterrupted):
        pretrain(cfg)
    monkeypatch.setattr(StopSignal, "should_stop", real)
    pretrain(cfg)
    a, b = _steps(straight), _steps(resumed)
    assert [s["global_step"] for s in b] == list(range(1, 7))
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6, abs=1e-6), (x, y)


def _worker(rank: int, port: int, overrides: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")  # fmt: skip
    real_finish = engine._finish

    def finish(trainer, info):
        torch.save({"loss": trainer.loss_fn.state_dict(), "global_step": trainer.global_step},
                   os.path.join(out, f"rank{rank}.pt"))  # fmt: skip
        return real_finish(trainer, info)

    engine._finish = finish
    engine.pretrain(load_pretrain_config("pretrain_synthetic_cpu", overrides))


@pytest.mark.dist
def test_two_processes_on_shards_agree(tiny_pretrain_overrides, synth_shards, tmp_path):
    run_dir = tmp_path / "run"
    overrides = _overrides(tiny_pretrain_overrides, synth_shards, run_dir, "schedule.epochs=1",
                           "schedule.unfreeze_epoch=null", "optim.batch_size=4")  # fmt: skip
    mp.spawn(_worker, args=(dist.find_free_port(), overrides, str(tmp_path)), nprocs=2)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["global_step"] == r1["global_step"] == 3  # 12 pairs: 6 per rank, 2 per step
    for key, value in r0["loss"].items():
        assert torch.equal(value, r1["loss"][key]), key
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["final"]["val_t2v_num_queries"] == 4


def test_embed_and_retrieval_read_the_shards(tiny_pretrain_overrides, synth_shards, tmp_path):
    import numpy as np

    from cpd.cli import main

    run_dir = tmp_path / "run"
    pretrain(load_pretrain_config("pretrain_synthetic_cpu", _overrides(
        tiny_pretrain_overrides, synth_shards, run_dir, "schedule.epochs=1",
        "run.val_every=0")))  # fmt: skip
    export, shards = str(run_dir / "export"), str(synth_shards / "train")
    view = ["--num-frames", "4", "--stride", "2", "--crop-size", "32", "--device", "cpu"]
    assert main(["embed", export, "--shards", shards, "--out", str(tmp_path / "emb"), *view]) == 0
    videos = np.load(tmp_path / "emb" / "videos.npy")
    texts = np.load(tmp_path / "emb" / "texts.npy")
    ids = [json.loads(x) for x in (tmp_path / "emb" / "videos_ids.jsonl").read_text().splitlines()]
    assert videos.shape == texts.shape == (12, 16)
    assert ids == [f"{s:05d}{p:04d}" for s, n in ((0, 5), (1, 5), (2, 2)) for p in range(n)]
    out = tmp_path / "ret"
    assert main(["retrieval", export, "--shards", shards, "--out", str(out), *view]) == 0
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert metrics["t2v_num_queries"] == 12 and metrics["num_videos"] == 12
    # the same figures as retrieval over the exported embeddings
    from cpd.eval.retrieval import retrieval_metrics

    again = retrieval_metrics(torch.from_numpy(videos).double(), torch.from_numpy(texts).double())
    assert again["t2v_r1"] == pytest.approx(metrics["t2v_r1"])


def test_mid_epoch_resume_under_another_plan_is_refused(
    tiny_pretrain_overrides, synth_shards, tmp_path, monkeypatch
):
    from cpd.errors import CheckpointError

    run_dir = tmp_path / "run"
    real, calls = StopSignal.should_stop, {"n": 0}

    def stop_after_one(self, device):
        real(self, device)
        calls["n"] += 1
        return calls["n"] == 1

    monkeypatch.setattr(StopSignal, "should_stop", stop_after_one)
    base = _overrides(tiny_pretrain_overrides, synth_shards, run_dir, "run.val_every=0")
    with pytest.raises(TrainingInterrupted):
        pretrain(load_pretrain_config("pretrain_synthetic_cpu", [*base, "data.workers=2"]))
    monkeypatch.setattr(StopSignal, "should_stop", real)
    with pytest.raises(CheckpointError, match=r"workers 2 -> 1"):
        pretrain(load_pretrain_config("pretrain_synthetic_cpu", [*base, "data.workers=0"]))
