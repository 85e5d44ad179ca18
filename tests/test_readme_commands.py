"""README examples that other tests do not run as written: the Python API snippet, the paper
preset's resolved configuration, the torchrun launch, the official checkpoint through
`cpd retrieval` / `cpd export`, `cpd bench load --make-sample`, `cpd test` on the packaged
UCF101 folds, and the video2dataset configuration.

Each test runs the README's command with the README's spelling, on tiny inputs (the official
checkpoint is a random one with the official key schema, see tests/official_reference.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cpd
from cpd.cli import main
from tests import official_reference as ref
from tests.videos import write_video

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    """The README's fenced code blocks of ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.S | re.M)


def _lines_with(text: str) -> list[str]:
    """README shell lines (continuations joined) that contain ``text``."""
    lines = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if text in line:
                lines.append(" ".join(line.split("#")[0].split()))
    return lines


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    """A random checkpoint in the official CPD-Video pretraining layout (3D ResNet-50)."""
    state = ref.random_state(ref.load_schema(ref.PRETRAIN_SCHEMA), torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("official") / "cpd_pretrained.pth"
    torch.save(ref.official_checkpoint(state), path)
    return path


def test_python_api_snippet_runs_as_written(official):
    (snippet,) = [b for b in _blocks("python") if "cpd.load_model" in b]
    write_video("video.mp4", num_frames=48, width=160, height=120)
    shutil.copy(official, "cpd_pretrained.pth")
    scope: dict = {}
    with torch.no_grad():
        exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 (our own README)
    assert tuple(scope["clip"].shape) == (3, 8, 112, 112)
    assert tuple(scope["views"].shape) == (30, 3, 8, 112, 112)  # the comment's shape
    video, text = scope["video_emb"], scope["text_emb"]
    assert tuple(video.shape) == (1, 256) and tuple(text.shape) == (1, 256)
    assert torch.allclose(video.norm(dim=1), torch.ones(1), atol=1e-4)  # "L2-normalised"


def test_paper_preset_prints_its_resolved_configuration(capsys):
    (line,) = _lines_with("--print-config")
    argv = line.split()[1:]
    assert argv == ["pretrain", "--config", "pretrain_instagram_r50", "--print-config"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # the paper's recipe, as the README's recipe table states it
    for key, value in (("epochs", "300"), ("num_negatives", "16384"), ("temperature", "0.07"),
                       ("unfreeze_epoch", "150"), ("arch", "r3d50")):  # fmt: skip
        assert re.search(rf"^\s*{key}: {re.escape(value)}\s*$", printed, re.M), key


@pytest.mark.dist
def test_torchrun_launches_pretraining_in_two_processes(tiny_pretrain_overrides, tmp_path):
    (line,) = _lines_with("torchrun")
    assert line.startswith("torchrun --nproc_per_node 8 -m cpd pretrain --config")
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("no torchrun beside this interpreter")
    run = tmp_path / "run"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "cpd", "pretrain",
           "--config", "pretrain_synthetic_cpu", *tiny_pretrain_overrides, f"run.out={run}",
           "schedule.epochs=1", "schedule.unfreeze_epoch=null"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((run / "run_info.json").read_text())
    assert info["world_size"] == 2
    assert (run / "export").is_dir() and (run / "last.pt").is_file()


def test_official_checkpoint_through_retrieval_and_export(official, tiny_synthetic):
    rows = [json.loads(x) for x in (tiny_synthetic / "captions.jsonl").read_text().splitlines()]
    Path("msrvtt_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    shutil.copy(official, "cpd_pretrained.pth")
    (retrieval,) = _lines_with("cpd retrieval cpd_pretrained.pth")
    (export,) = _lines_with("cpd export cpd_pretrained.pth")
    argv = retrieval.split()[1:]
    argv[argv.index("--video-root") + 1] = str(tiny_synthetic)
    views = ["--num-clips", "1", "--num-crops", "1", "--num-frames", "4", "--crop-size", "32",
             "--split", "all"]  # fmt: skip
    assert main([*argv, *views]) == 0
    metrics = json.loads(Path("runs/retrieval/results.json").read_text())["metrics"]
    assert metrics["num_videos"] == metrics["num_texts"] == 4

    assert main(export.split()[1:]) == 0
    exported = cpd.load_model("exports/cpd_r50")
    original = cpd.load_model("cpd_pretrained.pth")
    for key, value in original.state_dict().items():
        assert torch.equal(value, exported.state_dict()[key]), key


def test_bench_load_makes_the_reference_sample(capsys):
    (line,) = [x for x in _lines_with("--make-sample")] or [None]
    if line is None:  # the README gives the command in prose, with backquotes
        found = re.search(r"`(cpd bench load --make-sample [^`]*)`", README.read_text())
        assert found is not None
        line = found.group(1)
    argv = line.split()[1:]
    argv[argv.index("--clips") + 1] = "2"
    argv[argv.index("--repeat") + 1] = "1"
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path("sample.mp4").is_file() and out["videos"] == ["sample.mp4"]
    assert out["clips"] == 2 and out["shard_clips_per_s"] > 0


def test_cpd_test_runs_the_packaged_ucf101_folds(tmp_path, capsys):
    """`cpd test --dataset ucf101 --video-root /data/UCF-101 --fold 1 2 3` as written: the
    packaged split lists, UCF-101's folder layout, three folds and their mean. A few test
    videos of each fold are written; the others are absent and counted as failed."""
    from cpd.data.packaged_splits import load_packaged_split
    from cpd.models import ModelConfig, build_model, save_model

    (line,) = _lines_with("cpd test runs/ft/export")
    argv = line.split()[1:]
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="r3d10", base_width=8, num_classes=101))
    save_model(model, Path(argv[argv.index("test") + 1]))  # runs/ft/export
    root = tmp_path / "UCF-101"
    argv[argv.index("--video-root") + 1] = str(root)
    for fold in (1, 2, 3):
        records = load_packaged_split("ucf101", fold, root, "test").records
        for r in records[:: len(records) // 3][:3]:  # three classes apart
            if not Path(r.path).exists():
                Path(r.path).parent.mkdir(parents=True, exist_ok=True)
                write_video(r.path, num_frames=12, width=48, height=32)
    views = ["--num-clips", "1", "--num-crops", "1", "--num-frames", "4", "--crop-size", "32",
             "--batch-size", "64"]  # fmt: skip
    assert main([*argv, *views]) == 0
    results = json.loads(Path(argv[argv.index("-o") + 1], "results.json").read_text())
    for fold, size in ((1, 3783), (2, 3734), (3, 3696)):
        split = results["splits"][str(fold)]
        assert split["num_videos"] == size and split["num_evaluated"] == 3, fold
        assert split["num_failed"] == size - 3
    assert set(results["mean_over_splits"]) >= {"top1", "top1_std"}
    assert "mean" in capsys.readouterr().out


def test_video2dataset_configuration_is_the_papers_and_its_shards_read(tmp_path):
    """The README's video2dataset YAML holds the settings its prose gives (exact cuts at the
    `clips` column, short side 256, 1000 samples per shard, webdataset output), and shards in
    that output's naming (keys with a clip suffix, `.json` with the clip span) are read."""
    import yaml

    from cpd.data.shards import iter_shard, load_shard_index
    from tests.shard_writer import write_v2d_shards

    (block,) = [b for b in _blocks("yaml") if "ClippingSubsampler" in b]
    config = yaml.safe_load(block)
    sub = config["subsampling"]
    assert sub["ClippingSubsampler"]["args"] == {"precision": "exact"}
    assert sub["ResolutionSubsampler"]["args"] == {"video_size": 256, "resize_mode": "scale"}
    assert config["storage"]["number_sample_per_shard"] == 1000
    command = " ".join(line.lstrip("# ") for line in block.splitlines() if line.startswith("#"))
    for flag in ("--output_format=webdataset", "--clip_col=clips", "--caption_col=caption",
                 "--config=middle20.yaml"):  # fmt: skip
        assert flag in command, flag

    (tar,) = write_v2d_shards(
        tmp_path / "ig_v2d",
        [{"video": b"v0", "caption": "a cat"}, {"video": b"v1", "caption": "a dog"}],
        shard_size=2,
    )
    # video2dataset names a clip of sample k "{k:09d}_{clip:05d}": rename the members so
    import io
    import tarfile

    renamed = tmp_path / "ig_v2d" / "renamed.tar"
    with tarfile.open(tar) as src, tarfile.open(renamed, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            stem, suffix = member.name.split(".", 1)
            info = tarfile.TarInfo(f"{stem}_00000.{suffix}")
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    tar.unlink()
    for sidecar in (tmp_path / "ig_v2d").glob("00000*"):
        sidecar.unlink()
    index = load_shard_index(str(renamed))
    samples = list(iter_shard(index.urls[0], 0, table_dirs=index.table_dirs))
    assert index.total == 2
    assert [(s.key, s.caption()) for s in samples] == [("000000000_00000", "a cat"),
                                                       ("000000001_00000", "a dog")]  # fmt: skip
