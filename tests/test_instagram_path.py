"""The README's Instagram sequence, end to end through the real command line, on tiny data:
``cpd prepare --manifest instagram_captions.json --video-dir ig_raw/ -o ig``, then
``cpd pretrain --config pretrain_instagram_r50 data.manifest=ig/captions.jsonl`` (the paper's
preset, shrunk by overrides to seconds on a CPU) must export a model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import cpd
from cpd.cli import main
from tests.videos import write_video

CAPTIONS = {
    "ig101": {"subset": "training", "caption": "a dog runs on the beach #dogs"},
    "ig102": {"subset": "training", "caption": "sunset over the sea"},
    "ig103": {"subset": "training", "caption": "pasta night with friends"},
    "ig104": {"subset": "validation", "caption": "a cat sleeping"},
}

# What the preset needs shrunk to train in seconds on a CPU (the paper's model, clip size,
# batch, bank size, schedule and loader stay in the preset and are all that is overridden).
TINY = [
    "model.arch=r3d10",
    "model.base_width=8",
    "model.embed_dim=16",
    "model.text_head_dim=32",
    "data.num_frames=4",
    "data.stride=2",
    "data.crop_size=32",
    "data.scale_range=[32,40]",
    "data.workers=0",
    "optim.batch_size=2",
    "optim.amp=none",
    "optim.channels_last=false",
    "loss.num_negatives=4",
    "schedule.epochs=1",
    "schedule.milestones=[]",
    "run.val_every=1",
    "run.log_every=1",
    "run.progress=false",
    "run.tensorboard=false",
    "run.threads=1",
]


def test_readme_instagram_sequence(
    tmp_path: Path,
    tiny_text_encoder: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # the README's relative paths
    raw = Path("ig_raw")
    raw.mkdir()
    for video_id in CAPTIONS:
        write_video(raw / f"{video_id}.mp4", num_frames=20, fps=10, width=64, height=48,
                    texture=True)  # fmt: skip
    Path("instagram_captions.json").write_text(json.dumps(CAPTIONS), encoding="utf-8")

    # cpd prepare --manifest instagram_captions.json --video-dir ig_raw/ -o ig --workers 16
    fast = ["--short-side", "48", "--preset", "ultrafast", "--quiet"]
    argv = ["prepare", "--manifest", "instagram_captions.json", "--video-root", "ig_raw/",
            "-o", "ig", "--workers", "1", *fast]  # fmt: skip
    assert main(argv) == 0
    pairs = [json.loads(line) for line in Path("ig/captions.jsonl").read_text().splitlines()]
    assert sorted((p["id"], p["split"]) for p in pairs) == [
        ("ig101", "train"), ("ig102", "train"), ("ig103", "train"), ("ig104", "val"),
    ]  # fmt: skip

    # cpd pretrain --config pretrain_instagram_r50 data.manifest=ig/captions.jsonl \
    #     model.text_encoder=/path/to/distilbert-base-uncased run.out=runs/ig_r50
    argv = ["pretrain", "--config", "pretrain_instagram_r50", "data.manifest=ig/captions.jsonl",
            f"model.text_encoder={tiny_text_encoder}", "run.out=runs/ig_r50", *TINY]  # fmt: skip
    # the bug this guards against: the preset fixed data.format=instagram (now data.manifest_format), so the JSON Lines
    # that cpd prepare writes failed as "line 2: invalid JSON: Extra data"
    assert main([*argv, "data.manifest_format=instagram", "run.out=runs/fixed_format"]) == 2
    assert "format 'instagram' was given, but the file holds JSON Lines" in capsys.readouterr().err
    assert main(argv) == 0
    run = Path("runs/ig_r50")
    assert (run / "export" / "model.safetensors").is_file()
    results = json.loads((run / "results.json").read_text())
    assert (results["epochs"], results["global_step"]) == (1, 1)  # 3 training pairs, batch 2
    assert math.isfinite(results["final"]["train_loss"])
    model = cpd.load_model(run / "export")
    assert model.encode_text(["a dog"]).shape == (1, 16)
    # the resolved configuration kept the preset's automatic format
    assert "format: null" in (run / "config.yaml").read_text()

    # the same videos as shards, train and val apart, the train part prepared on 2 "machines":
    # cpd prepare --manifest instagram_captions.json --video-root ig_raw/ -o ig_shards/train \
    #     --split train --shards --shard-size 1000 --part 0/2 --workers 16   (and --part 1/2)
    for part in ("0/2", "1/2"):
        argv = ["prepare", "--manifest", "instagram_captions.json", "--video-root", "ig_raw/",
                "-o", "ig_shards/train", "--split", "train", "--shards", "--shard-size", "1",
                "--part", part, "--workers", "1", *fast]  # fmt: skip
        assert main(argv) == 0
    # cpd prepare --manifest instagram_captions.json --video-root ig_raw/ -o ig_shards/val \
    #     --split val --shards
    argv = ["prepare", "--manifest", "instagram_captions.json", "--video-root", "ig_raw/",
            "-o", "ig_shards/val", "--split", "val", "--shards", *fast]  # fmt: skip
    assert main(argv) == 0
    assert len(list(Path("ig_shards/train").glob("*.tar"))) == 3
    # cpd pretrain --config pretrain_instagram_r50 data.shards=ig_shards/train \
    #     data.val_shards=ig_shards/val model.text_encoder=... run.out=runs/ig_r50
    argv = ["pretrain", "--config", "pretrain_instagram_r50", "data.shards=ig_shards/train",
            "data.val_shards=ig_shards/val", f"model.text_encoder={tiny_text_encoder}",
            "run.out=runs/ig_r50_shards", *TINY]  # fmt: skip
    assert main(argv) == 0
    results = json.loads(Path("runs/ig_r50_shards/results.json").read_text())
    assert results["global_step"] == 1 and results["final"]["val_t2v_num_queries"] == 1


def test_preset_format_is_detected(tmp_path: Path) -> None:
    """The preset leaves the format to the file: the Instagram JSON and JSON Lines both read,
    and a format given against the content is an error that says what the file holds."""
    from cpd.data.manifests import read_caption_manifest
    from cpd.errors import DataError
    from cpd.train.config import load_pretrain_config

    cfg = load_pretrain_config("pretrain_instagram_r50")
    assert cfg.data.manifest_format is None
    ig = tmp_path / "instagram_captions.json"
    ig.write_text(json.dumps(CAPTIONS), encoding="utf-8")
    lines = tmp_path / "captions.jsonl"
    rows = [{"video": f"videos/{k}.mp4", "caption": v["caption"], "split": v["subset"], "id": k}
            for k, v in CAPTIONS.items()]  # fmt: skip
    lines.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    for path in (ig, lines):
        records = read_caption_manifest(path, tmp_path, "train", cfg.data.manifest_format)
        assert [r.video_id for r in records] == ["ig101", "ig102", "ig103"]
    with pytest.raises(DataError) as info:
        read_caption_manifest(lines, tmp_path, "train", "instagram")
    message = str(info.value)
    assert "format 'instagram' was given, but the file holds JSON Lines" in message
    assert "format=null" in message
