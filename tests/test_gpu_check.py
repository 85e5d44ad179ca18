"""``benchmarks/gpu_check.py``, the CUDA path check, runs its whole path on the CPU (gloo for
NCCL), so that the script a GPU machine runs is known to work before it gets one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.dist
def test_gpu_check_runs_every_check_on_the_cpu():
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--arch", "r3d10", "--batch-size", "2",
           "--crop-size", "32", "--steps", "4", "--bench-sizes", "2x32"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checks = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    by_name = {c["check"]: c for c in checks}
    assert [c["check"] for c in checks] == ["env", "process_group", "ddp_pretrain_steps",
                                            "bench_step"]  # fmt: skip
    group = by_name["process_group"]
    assert group["backend"] == "gloo" and group["world_size"] == 1 and group["all_reduce_ok"]
    steps = by_name["ddp_pretrain_steps"]
    assert steps["finite"] and len(steps["losses"]) == 4 and steps["median_step_s"] > 0
    bench = by_name["bench_step"]
    assert (bench["batch_size"], bench["crop_size"]) == (2, 32) and bench["step_s"] > 0
