"""`cpd test` in two gloo processes equals one process exactly.

Five videos (the four synthetic test videos and an undecodable one) over two ranks: the
sampler gives rank 0 videos 0, 2, 4 and rank 1 videos 1, 3 plus video 0 again as padding,
which the gather must drop; the failure happens on rank 0 and must be reported once.
Each process runs the real command, joining the process group from torchrun's variables.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from cpd import dist
from tests.test_eval_cli import VIEWS, cli, make_classifier, write_csv_with_bad_video

pytestmark = pytest.mark.dist
WORLD = 2


def _worker(rank: int, port: int, argv: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))  # fmt: skip
    torch.set_num_threads(1)
    if cli("test", argv) != 0:
        raise RuntimeError(f"rank {rank}: cpd test failed")


def test_two_process_test_equals_one_process(tiny_synthetic, tmp_path):
    listing, classes, _ = write_csv_with_bad_video(tiny_synthetic, tmp_path)
    model = make_classifier(tmp_path / "cls")
    argv = [model, "--dataset", "csv", "--csv", str(listing), "--classes", str(classes),
            "--split", "all", "--video-root", str(tmp_path), "--batch-size", "2", *VIEWS]  # fmt: skip
    two, one = tmp_path / "two", tmp_path / "one"
    mp.spawn(_worker, args=(dist.find_free_port(), [*argv, "--out", str(two)]), nprocs=WORLD)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic as the workers
    try:
        assert cli("test", [*argv, "--out", str(one)]) == 0
    finally:
        torch.set_num_threads(threads)

    a = json.loads((two / "results.json").read_text())
    b = json.loads((one / "results.json").read_text())
    assert a["world_size"] == 2 and b["world_size"] == 1
    assert a["splits"] == b["splits"]
    assert a["splits"]["1"]["num_videos"] == 5 and a["splits"]["1"]["num_failed"] == 1
    pred_a = (two / "predictions_split1.csv").read_text()
    assert pred_a == (one / "predictions_split1.csv").read_text()
    assert len(pred_a.splitlines()) == 1 + 5
    scores_a, scores_b = np.load(two / "scores_split1.npy"), np.load(one / "scores_split1.npy")
    assert np.array_equal(scores_a, scores_b, equal_nan=True)
