"""``cpd bench step`` prints one JSON line with both step times (values sane, not timed)."""

from __future__ import annotations

import json

import pytest

from cpd.cli import main


def test_bench_step_prints_one_json_line(capsys):
    rc = main(["bench", "step", "--arch", "r3d10", "--batch-size", "2", "--num-frames", "4",
               "--crop-size", "32", "--steps", "1", "--warmup", "0", "--num-negatives", "16",
               "--num-data", "64", "--text-encoder", "all-MiniLM-L6-v2"])  # fmt: skip
    assert rc == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["arch"] == "r3d10" and result["batch_size"] == 2
    assert result["step_s"] > 0 and result["baseline_step_s"] > 0
    assert result["speedup"] == round(result["baseline_step_s"] / result["step_s"], 3)
    assert result["amp"] in ("fp32", "bfloat16")
    # r3d10 on 2 x 4 x 32 x 32: forward and backward arithmetic counted from the shapes
    assert 0 < result["video_gflop"] < 10
    assert result["video_gflops_per_s"] == pytest.approx(
        result["video_gflop"] / result["step_s"], rel=0.01, abs=0.01
    )
