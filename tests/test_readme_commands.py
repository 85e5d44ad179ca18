"""README examples that other tests do not run as written: the Python API snippet, the paper
preset's resolved configuration, the torchrun launch, the official checkpoint through
`cpd retrieval` / `cpd export`, and `cpd bench load --make-sample`.

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
