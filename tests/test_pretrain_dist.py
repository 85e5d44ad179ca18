"""`cpd pretrain` in two gloo processes: equal step counts, identical banks, exact validation.

Each process runs the real entry point (`pretrain`), which joins the process group from the env://
variables (as under torchrun). 11 training pairs with batch 2 per process: the sampler pads one
repeat; 5 validation pairs: the sampler pads one repeat that validation must drop.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

import cpd
from cpd import dist
from cpd.train import pretrain as engine
from cpd.train.config import load_pretrain_config
from cpd.train.pretrain import evaluate_retrieval

pytestmark = pytest.mark.dist
WORLD = 2


def _worker(rank: int, port: int, overrides: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))  # fmt: skip
    real_finish = engine._finish

    def finish(trainer, info):  # keep what each rank ends with
        torch.save(
            {"loss": trainer.loss_fn.state_dict(), "global_step": trainer.global_step,
             "model": trainer.model.state_dict()},
            os.path.join(out, f"rank{rank}.pt"),
        )  # fmt: skip
        return real_finish(trainer, info)

    engine._finish = finish
    engine.pretrain(load_pretrain_config("pretrain_synthetic_cpu", overrides))


def _manifest_with_five_val(src, dst) -> None:
    rows = [json.loads(x) for x in (src / "captions.jsonl").read_text().splitlines()]
    first_train = next(r for r in rows if r["split"] == "train")
    first_train["split"] = "val"
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_two_processes_agree_and_validate_exactly(
    tiny_pretrain_overrides, tiny_synthetic, tmp_path
):
    manifest = tmp_path / "captions.jsonl"
    _manifest_with_five_val(tiny_synthetic, manifest)
    run_dir = tmp_path / "run"
    overrides = [*tiny_pretrain_overrides, f"data.manifest={manifest}",
                 f"data.video_root={tiny_synthetic}", f"run.out={run_dir}", "schedule.epochs=1",
                 "schedule.unfreeze_epoch=null"]  # fmt: skip
    mp.spawn(_worker, args=(dist.find_free_port(), overrides, str(tmp_path)), nprocs=WORLD)

    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["global_step"] == r1["global_step"] == 3  # 11 pairs -> 12 slots, 6 per rank
    for key, value in r0["loss"].items():
        assert torch.equal(value, r1["loss"][key]), key
    for key, value in r0["model"].items():  # BatchNorm statistics included (synced at epoch end)
        assert torch.equal(value, r1["model"][key]), key
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["global_step"] for m in metrics if m["kind"] == "step"] == [1, 2, 3]

    # validation of the final weights in this single process, on the same pairs
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == WORLD
    val = {k.removeprefix("val_"): v for k, v in results["final"].items() if k.startswith("val_")}
    assert val["t2v_num_queries"] == 5
    cfg = load_pretrain_config("pretrain_synthetic_cpu", overrides)
    model = cpd.load_model(run_dir / "export")
    data = engine.build_data(cfg.data, model.textual_encoder.tokenizer, seed=0, val=True,
                             progress=False)  # fmt: skip
    single = evaluate_retrieval(model, data.val, batch_size=2, device=torch.device("cpu"))
    assert single == val
