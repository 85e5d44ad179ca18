"""Pairs whose video file does not exist are left out at start, as the official loader does:
no memory-bank row for them, counted in results.json and listed in missing_videos.txt."""

from __future__ import annotations

import json

from cpd.train.checkpoint import read_checkpoint
from cpd.train.config import load_pretrain_config
from cpd.train.pretrain import pretrain


def test_missing_videos_take_no_bank_row(tiny_pretrain_overrides, tiny_synthetic, tmp_path):
    rows = [json.loads(x) for x in (tiny_synthetic / "captions.jsonl").read_text().splitlines()]
    rows.insert(3, {"video": "videos/gone/never.mp4", "caption": "a ghost", "split": "train"})
    rows.append({"video": "videos/gone/also.mp4", "caption": "a ghost too", "split": "val"})
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    cfg = load_pretrain_config("pretrain_synthetic_cpu", [
        *tiny_pretrain_overrides, f"data.manifest={manifest}", f"data.video_root={tiny_synthetic}",
        "schedule.epochs=1", f"run.out={run_dir}"])  # fmt: skip
    results = pretrain(cfg)
    assert results["missing_videos"] == 2
    listed = (run_dir / "missing_videos.txt").read_text().splitlines()
    assert [p.rsplit("/", 1)[1] for p in listed] == ["never.mp4", "also.mp4"]
    loss = read_checkpoint(run_dir / "last.pt")["loss"]
    bank = next(v for k, v in loss.items() if "memory" in k)
    assert bank.shape[0] == 12  # the 12 training pairs with a file, not 13
    assert results["final"]["val_t2v_num_queries"] == 4
