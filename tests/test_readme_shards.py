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


def test_video2dataset_files_parquet_pretrains(tiny_synthetic, tiny_pretrain_overrides, tmp_path):
    """The README's video2dataset command: output_format=files, {key}.mp4 in v2d/00000/ and
    v2d/00000.parquet beside it (a failed download listed, with no file)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(x) for x in (tiny_synthetic / "captions.jsonl").read_text().splitlines()]
    folder = tmp_path / "v2d" / "00000"
    folder.mkdir(parents=True)
    table = []
    for pos, row in enumerate(r for r in rows if r["split"] == "train"):
        key = f"00000{pos:04d}"
        shutil.copy(tiny_synthetic / row["video"], folder / f"{key}.mp4")
        table.append({"key": key, "caption": row["caption"], "status": "success",
                      "url": f"https://x/{key}", "error_message": None})  # fmt: skip
    table.append({"key": "000009999", "caption": "gone", "status": "failed_to_download",
                  "url": "https://x/gone", "error_message": "404"})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "v2d" / "00000.parquet")
    run_dir = tmp_path / "run"
    overrides = [o for o in tiny_pretrain_overrides if not o.startswith("data.manifest")]
    # the README's preset, shrunk: a small 3D ResNet, the tiny text encoder, fp32
    argv = ["pretrain", "--config", "pretrain_instagram_r50", *overrides, "model.arch=r3d10",
            "optim.amp=none", "optim.channels_last=false", "data.workers=0",
            f"data.manifest={tmp_path / 'v2d' / '00000.parquet'}", f"data.video_root={folder}",
            "data.video_key={key}.mp4", "data.train_split=", "data.val_split=",
            "schedule.epochs=1", f"run.out={run_dir}"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 3  # 12 pairs
