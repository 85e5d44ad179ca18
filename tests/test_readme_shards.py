"""The README's shard path, through the `cpd` command line on tiny data: `cpd prepare --shards
--split` (train in two parts, val whole), `cpd pretrain --config pretrain_synthetic_cpu
data.shards=... data.val_shards=...`, `cpd embed` and `cpd retrieval` on the val shards, and the
paper preset on the same shards."""

from __future__ import annotations

import json

import numpy as np

from cpd.cli import main

FAST = ["--seconds", "0", "--short-side", "32", "--preset", "ultrafast", "--workers", "1",
        "--quiet"]  # fmt: skip


def test_prepare_shards_then_pretrain_embed_retrieval(
    tiny_synthetic, tiny_pretrain_overrides, tiny_text_encoder, tmp_path
):
    manifest = str(tiny_synthetic / "captions.jsonl")
    train, val = tmp_path / "shards" / "train", tmp_path / "shards" / "val"
    for part in ("0/2", "1/2"):  # two machines, one corpus
        argv = ["prepare", "--manifest", manifest, "-o", str(train), "--split", "train",
                "--shards", "--shard-size", "5", "--part", part, *FAST]  # fmt: skip
        assert main(argv) == 0
    assert main(["prepare", "--manifest", manifest, "-o", str(val), "--split", "val",
                 "--shards", *FAST]) == 0  # fmt: skip
    assert sorted(p.name for p in train.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]

    run_dir = tmp_path / "run"
    overrides = [o for o in tiny_pretrain_overrides if not o.startswith("data.manifest")]
    argv = ["pretrain", "--config", "pretrain_synthetic_cpu", "data.manifest=",
            f"data.shards={train}", f"data.val_shards={val}", f"run.out={run_dir}", *overrides]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == 6 and results["final"]["val_t2v_num_queries"] == 4

    export = str(run_dir / "export")
    view = ["--num-frames", "4", "--stride", "2", "--crop-size", "32"]
    assert main(["embed", export, "--shards", str(val), "--out", str(tmp_path / "emb"), *view]) == 0
    assert np.load(tmp_path / "emb" / "videos.npy").shape == (4, 16)
    assert main(["retrieval", export, "--shards", str(val), "--out", str(tmp_path / "ret"),
                 *view]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "ret" / "results.json").read_text())["metrics"]
    assert metrics["num_videos"] == 4

    # the paper preset on the same shards (shrunk as in test_instagram_path)
    from tests.test_instagram_path import TINY

    paper = tmp_path / "paper"
    argv = ["pretrain", "--config", "pretrain_instagram_r50", f"data.shards={train}",
            f"data.val_shards={val}", f"model.text_encoder={tiny_text_encoder}",
            f"run.out={paper}", *TINY]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((paper / "results.json").read_text())["global_step"] == 6  # 12 pairs / 2
