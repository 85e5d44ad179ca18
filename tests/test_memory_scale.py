"""Memory at scale: no N-sized fp32 temporaries in the NCE loss, a lazy text-feature cache,
``optim.cache_text_features``, and ``benchmarks/memory_scale.py`` (its ``--quick`` run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import cpd.losses.memory_bank as memory_bank
from cpd.losses import MemoryBankNCELoss, bank_init_bound, negative_generator
from cpd.losses.memory_bank import MemoryBank
from cpd.train import pretrain as engine
from cpd.train.config import load_pretrain_config
from cpd.train.pretrain import Trainer, pretrain
from cpd.train.step import TextFeatureCache

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_scale.py"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("chunk", [24, 1 << 24])  # 3 rows of 8 per chunk; one chunk
def test_chunked_bank_init_equals_one_fp32_draw(monkeypatch, dtype, chunk):
    monkeypatch.setattr(memory_bank, "INIT_CHUNK_ELEMENTS", chunk)
    n, d = 100, 8
    bank = MemoryBank(n, d, generator=torch.Generator().manual_seed(3), dtype=dtype)
    s = bank_init_bound(d)
    want = torch.rand(n, d, generator=torch.Generator().manual_seed(3)).mul_(2 * s).sub_(s)
    assert bank.memory.dtype == dtype
    assert torch.equal(bank.memory, want.to(dtype))


def _bank_of_rows(num_data: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """A bank-shaped view of ``num_data`` rows that holds one row of memory."""
    row = F.normalize(torch.randn(1, dim, generator=torch.Generator().manual_seed(0)), dim=1)
    return row.to(dtype).expand(num_data, dim)


@pytest.mark.parametrize(("num_data", "want"), [(10_000_000, "sampled"), (300_000, "whole")])
def test_paper_batch_scores_sampled_rows_at_10m_and_whole_bank_at_300k(monkeypatch, num_data, want):
    """B = 32, K = 16384: B·(1 + K) = 524,320 rows; the whole bank is scored only below that,
    so at N = 10M a 16-bit bank is never copied to fp32 whole (5 GB → 10 GB per bank)."""
    b, k, dim = 32, 16384, 16
    loss = MemoryBankNCELoss(4, dim, num_negatives=k, bank_dtype=torch.bfloat16)
    loss.video_bank.memory = _bank_of_rows(num_data, dim, torch.bfloat16)
    loss.text_bank.memory = _bank_of_rows(num_data, dim, torch.bfloat16)
    gathers = []
    real = MemoryBank.gather
    monkeypatch.setattr(MemoryBank, "gather", lambda self, i: gathers.append(i) or real(self, i))
    g = torch.Generator().manual_seed(1)
    video = F.normalize(torch.randn(b, dim, generator=g), dim=1).requires_grad_(True)
    text = F.normalize(torch.randn(b, dim, generator=g), dim=1).requires_grad_(True)
    idx = torch.randint(num_data, (b,), generator=g)
    terms = loss(video, text, idx, generator=negative_generator(0, 0, 0, 0), update_memory=False)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and torch.isfinite(video.grad).all()
    if want == "sampled":
        assert len(gathers) == 2 and all(i.shape == (b, 1 + k) for i in gathers)
    else:
        assert gathers == []


class _CountingEncoder(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden, self.calls = hidden, 0

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return input_ids[:, :1].float().expand(-1, self.hidden) + 0.5


def test_text_cache_allocates_rows_at_first_use_and_knows_its_size():
    cache = TextFeatureCache(1000, 16)
    assert cache.features is None and cache.nbytes == 1000 * (16 * 2 + 1)
    encoder = _CountingEncoder(16)
    ids = torch.tensor([[3, 0], [7, 0]])
    out = cache.pooled(encoder, ids, torch.ones_like(ids), torch.tensor([5, 9]))
    assert cache.features is not None and cache.features.shape == (1000, 16)
    assert cache.features.dtype == torch.float16
    assert torch.equal(out, torch.tensor([[3.5] * 16, [7.5] * 16]))
    assert cache.filled.nonzero().flatten().tolist() == [5, 9]
    again = cache.pooled(encoder, ids, torch.ones_like(ids), torch.tensor([9, 5]))
    assert encoder.calls == 1 and torch.equal(again, out.flip(0))


def test_warm_text_cache_skips_a_dataset_without_token_table():
    """A streaming dataset has no ``input_ids`` table: nothing is warmed, rows fill lazily."""
    cache = TextFeatureCache(4, 8)
    fake = SimpleNamespace(
        text_cache=cache,
        data=SimpleNamespace(train=[None] * 4),  # a dataset of 4 samples, no input_ids
        env=SimpleNamespace(device=torch.device("cpu")),
        model=None,  # would fail if touched
        amp_dtype=None,
    )
    Trainer._warm_text_cache(fake)  # type: ignore[arg-type]
    assert not cache.filled.any() and cache.features is None


@pytest.mark.parametrize("cache_on", [True, False])
def test_cache_text_features_switch(
    tiny_pretrain_overrides, tmp_path, monkeypatch, capfd, cache_on
):
    seen = []
    real_step = engine.pretrain_step

    def recording(model, loss_fn, optimizer, batch, **kwargs):
        seen.append(kwargs["text_cache"])
        return real_step(model, loss_fn, optimizer, batch, **kwargs)

    monkeypatch.setattr(engine, "pretrain_step", recording)
    overrides = [
        *tiny_pretrain_overrides,
        f"run.out={tmp_path}",
        "schedule.epochs=1",
        "schedule.unfreeze_epoch=null",
        "run.val_every=0",
        f"optim.cache_text_features={str(cache_on).lower()}",
    ]
    results = pretrain(load_pretrain_config("pretrain_synthetic_cpu", overrides))
    assert results["final"]["train_skipped_steps"] == 0 and len(seen) == 3
    err = capfd.readouterr().err
    if cache_on:
        assert all(isinstance(c, TextFeatureCache) for c in seen)
        assert bool(seen[0].filled.all())  # warmed from the manifest's token table
        assert err.count("text-feature cache: 12 captions") == 1
    else:
        assert seen == [None, None, None]  # the frozen encoder runs on every step
        assert "text-feature cache" not in err


def test_memory_scale_quick_reports_measurements():
    configs = ["nce_bfloat16", "infonce", "text_cache"]
    cmd = [sys.executable, str(SCRIPT), "--quick", "--steps", "2", "--configs", *configs]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            records[record["config"]] = record
    assert set(records) == set(configs)
    fields = {"rows", "dim", "batch", "steps", "scoring", "bank_bytes", "baseline_rss_bytes"}
    fields |= {"alloc_rss_bytes", "init_extra_bytes", "step_extra_bytes", "peak_rss_bytes"}
    fields |= {"init_seconds", "step_seconds", "step_seconds_median"}
    for record in records.values():
        assert fields <= set(record) and not record.get("skipped")
        assert len(record["step_seconds"]) == 2 and record["peak_rss_bytes"] > 0
    nce = records["nce_bfloat16"]
    n, dim = nce["rows"], nce["dim"]
    assert (n, dim) == (300_000, 256) and nce["bank_dtype"] == "bfloat16"
    assert nce["bank_bytes"] == 2 * n * dim * 2
    assert nce["scoring"] == "sampled rows"
    # the banks are resident; building them held no fp32 copy of a bank (that is 2x bank_bytes
    # / 2 = one bank in fp32 = bank_bytes); a 64 MiB init chunk is allowed
    assert nce["alloc_rss_bytes"] >= 0.9 * nce["bank_bytes"]
    assert nce["init_extra_bytes"] < nce["bank_bytes"] / 2
    assert nce["peak_rss_bytes"] >= nce["baseline_rss_bytes"] + nce["bank_bytes"]
    assert records["infonce"]["bank_bytes"] == 0 and records["infonce"]["scoring"] == "none"
    cache = records["text_cache"]
    assert cache["cache_full_bytes"] == n * (768 * 2 + 1)
    assert cache["peak_rss_bytes"] - cache["baseline_rss_bytes"] < cache["cache_full_bytes"] / 4
    assert "| nce_bfloat16 | 300,000 | sampled rows |" in proc.stdout


def test_memory_scale_help():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--rows" in proc.stdout and "--quick" in proc.stdout


def test_estimate_table_cells():
    import importlib.util

    spec = importlib.util.spec_from_file_location("memory_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cells = module.estimate(10_000_000, 96_271_424)
    assert cells["banks_fp32"] == 20_480_000_000 and cells["banks_16bit"] == 10_240_000_000
    assert cells["model_and_sgd"] == 2 * 4 * 96_271_424
    assert cells["checkpoint_16bit"] == 10_240_000_000 + 770_171_392
    assert cells["captions_manifest"] == 3_200_000_000 and cells["captions_streaming"] == 0
    assert cells["text_cache"] == 10_000_000 * (768 * 2 + 1)
