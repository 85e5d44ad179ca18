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
from cpd.eval import retrieval
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
    _keep_val_embeddings(os.path.join(out, f"rank{rank}_val.pt"))
    engine.pretrain(load_pretrain_config("pretrain_synthetic_cpu", overrides))


def _keep_val_embeddings(path: str) -> None:
    """Save the embeddings each retrieval evaluation ranks (the last call wins: the final one)."""
    real = retrieval.retrieval_metrics

    def keep(videos, texts, **kwargs):
        torch.save({"videos": videos, "texts": texts}, path)
        return real(videos, texts, **kwargs)

    retrieval.retrieval_metrics = keep


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
                 "schedule.unfreeze_epoch=null",
                 # fp32: on a CPU with native bf16 "auto" would validate under bf16 autocast,
                 # and the single-process check below runs in fp32
                 "optim.amp=none"]  # fmt: skip
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
    real_metrics = retrieval.retrieval_metrics
    model = cpd.load_model(run_dir / "export")
    data = engine.build_data(cfg.data, model.textual_encoder.tokenizer, seed=0, val=True,
                             progress=False)  # fmt: skip
    _keep_val_embeddings(str(tmp_path / "single_val.pt"))
    try:
        evaluate_retrieval(model, data.val, batch_size=2, device=torch.device("cpu"))
    finally:
        retrieval.retrieval_metrics = real_metrics
    single = torch.load(tmp_path / "single_val.pt", weights_only=True)
    gathered = torch.load(tmp_path / "rank0_val.pt", weights_only=True)
    # the same rows in the same order, the padded repeat dropped: equal up to the rounding
    # that other batch compositions give (which may decide a barely trained model's near-ties,
    # so the ranks are checked on the gathered embeddings themselves)
    for key in ("videos", "texts"):
        assert gathered[key].shape == single[key].shape == (5, 16), key
        torch.testing.assert_close(gathered[key], single[key], atol=1e-5, rtol=1e-4)
    reported = retrieval.retrieval_metrics(gathered["videos"], gathered["texts"])
    assert {k: float(v) for k, v in reported.items() if isinstance(v, (int, float))} == val
