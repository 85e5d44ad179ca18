"""``cpd bench step``: seconds per pretraining optimizer step, ours against the official way.

Both measurements run in the same process on the same weights, data and loss:

* ``step_s``: this package's step — channels-last 3D layout, bf16 autocast (CPU with bf16
  support, or CUDA), stage-I text features from the cache (warm: every caption seen once).
* ``baseline_step_s``: the official code's way — fp32, contiguous layout, the frozen text
  encoder run on every step over captions zero-padded to 64 tokens without attention mask,
  NCE scores from the gathered ``B·(1 + K)`` bank rows (ours scores the whole bank in one
  matrix product where that moves less memory; the values are equal).

Video forward + backward, the NCE terms with K negatives, clipping, SGD step and bank update
are identical in both. Reported: medians over ``steps`` after ``warmup`` steps, and the video
encoder's forward + backward arithmetic (``video_gflop``) with the rate our step achieves on it
(``video_gflops_per_s``): a step cannot beat ``video_gflop`` over the machine's peak.
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

import torch

from cpd.losses import MemoryBankNCELoss, negative_generator
from cpd.models import ModelConfig, build_model
from cpd.train.amp import default_amp_dtype
from cpd.train.step import TextFeatureCache, pretrain_step


def video_gflop(config: ModelConfig, batch_size: int, num_frames: int, crop_size: int) -> float:
    """GFLOP of the video encoder's forward and backward on one batch (a multiply-add is
    two), counted on the meta device: shapes only, no arithmetic. The floor of a step's time
    is this over the machine's best convolution throughput."""
    from torch.utils.flop_counter import FlopCounterMode

    from cpd.models.cpd import build_video_model

    with torch.device("meta"):
        encoder = build_video_model(config)
        clips = torch.empty(batch_size, 3, num_frames, crop_size, crop_size)
    with FlopCounterMode(display=False) as counter:
        encoder.forward_features(clips).sum().backward()
    return counter.get_total_flops() / 1e9


def _timed_steps(run_step: Any, steps: int, warmup: int, device: torch.device) -> list[float]:
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run_step(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def bench_step(
    arch: str = "r3d50",
    batch_size: int = 4,
    num_frames: int = 8,
    crop_size: int = 112,
    *,
    text_encoder: str = "distilbert-base-uncased",
    num_data: int = 20_000,
    num_negatives: int = 16384,
    steps: int = 5,
    warmup: int = 2,
    device: str = "cpu",
    amp: str = "auto",
    baseline: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure both step variants; returns the figures as a JSON-ready dict."""
    dev = torch.device(device)
    amp_dtype = {
        "auto": default_amp_dtype(dev),
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
        "none": None,
    }[amp]
    torch.manual_seed(seed)
    config = ModelConfig(arch=arch, text_encoder=text_encoder, text_compat=True)
    with warnings.catch_warnings():  # DistilBERT's random init is intended here
        warnings.simplefilter("ignore")
        model = build_model(config).to(dev)
    model.textual_encoder.freeze()
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(batch_size, 3, num_frames, crop_size, crop_size, generator=gen).to(dev)
    lengths = torch.randint(8, 40, (batch_size,), generator=gen)
    ids = torch.zeros(batch_size, 64, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        ids[row, :n] = torch.randint(1000, 30000, (n,), generator=gen)
        ids[row, 0], ids[row, n - 1] = 101, 102
    batch = {
        "video": video,
        "input_ids": ids.to(dev),
        "attention_mask": (ids > 0).long().to(dev),
        "index": torch.arange(batch_size, device=dev),
    }

    def measure(fast: bool) -> list[float]:
        model.load_state_dict(init_state)
        # the official NCE gathers the B x (1 + K) sampled rows of each bank
        loss_fn = MemoryBankNCELoss(num_data, num_negatives=num_negatives, dense_scores=fast)
        loss_fn = loss_fn.to(dev)
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(trainable, lr=0.01, momentum=0.9, weight_decay=1e-4)
        fmt = torch.channels_last_3d if fast else torch.contiguous_format
        model.to(memory_format=fmt)
        cache = TextFeatureCache(num_data, model.textual_encoder.hidden_size) if fast else None
        step_batch = dict(batch)
        if not fast:  # the official text path: no attention mask at all
            step_batch["attention_mask"] = torch.ones_like(batch["attention_mask"])

        def run(i: int) -> None:
            out = pretrain_step(
                model,
                loss_fn,
                opt,
                step_batch,
                generator=negative_generator(seed, 0, i, 0, device=dev),
                text_cache=cache,
                amp_dtype=amp_dtype if fast else None,
                clip_norm=20.0,
                memory_format=fmt,
            )
            if out.skipped:  # a skipped step does less work: its time would flatter the figure
                raise RuntimeError(f"benchmark step {i} had a non-finite loss {out.terms}")

        return _timed_steps(run, steps, warmup, dev)

    fast_times = measure(fast=True)
    result: dict[str, Any] = {
        "arch": arch,
        "batch_size": batch_size,
        "num_frames": num_frames,
        "crop_size": crop_size,
        "num_negatives": num_negatives,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "step_s": round(statistics.median(fast_times), 4),
    }
    # the video network's arithmetic, and the rate our step runs it at: the floor argument
    gflop = video_gflop(config, batch_size, num_frames, crop_size)
    result["video_gflop"] = round(gflop, 3)
    result["video_gflops_per_s"] = round(gflop / result["step_s"], 2)
    if baseline:
        base_times = measure(fast=False)
        result["baseline_step_s"] = round(statistics.median(base_times), 4)
        result["speedup"] = round(result["baseline_step_s"] / result["step_s"], 3)
    return result
