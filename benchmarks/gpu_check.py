"""CUDA path check: bf16 autocast, NCCL with one process, DDP pretraining steps, step benchmark.

Run on a GPU machine: ``python benchmarks/gpu_check.py [--arch r3d50] [--batch-size 32]``.
Prints one JSON line per check. Uses random clips and captions: it checks the compute path,
not the data pipeline. ``--device cpu`` runs the same checks on the CPU (gloo for NCCL), as the
test suite does with a small model.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as tdist

from cpd import dist
from cpd.losses import MemoryBankNCELoss, negative_generator
from cpd.models import ModelConfig, build_model
from cpd.train.benchmark import bench_step
from cpd.train.step import TextFeatureCache, pretrain_step


def emit(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="r3d50")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--crop-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--bench-sizes", nargs="+", metavar="BxCROP",
                    help="step benchmarks to run, batch x crop (default: 4x112 and the "
                         "--batch-size x --crop-size of the DDP check)")  # fmt: skip
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.bench_sizes or
             ["4x112", f"{args.batch_size}x{args.crop_size}"]]  # fmt: skip
    dev = torch.device(args.device)
    emit(
        check="env",
        torch=torch.__version__,
        cuda=torch.version.cuda,
        device=torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
        bf16=dev.type == "cuda" and torch.cuda.is_bf16_supported(),
    )

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(dist.find_free_port()))
    backend = "nccl" if dev.type == "cuda" else "gloo"
    t0 = time.perf_counter()
    tdist.init_process_group(backend, rank=0, world_size=1)
    x = torch.ones(4, device=dev)
    tdist.all_reduce(x)
    emit(
        check="process_group",
        backend=backend,
        world_size=dist.get_world_size(),
        all_reduce_ok=bool((x == 1).all()),
        init_s=round(time.perf_counter() - t0, 2),
    )

    torch.manual_seed(0)
    config = ModelConfig(arch=args.arch, text_encoder="distilbert-base-uncased", text_compat=True)
    model = build_model(config).to(dev)
    model.textual_encoder.freeze()
    model = model.to(memory_format=torch.channels_last_3d)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[0] if dev.type == "cuda" else None
    )
    loss_fn = MemoryBankNCELoss(20_000, num_negatives=16384).to(dev)
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=1e-4
    )
    cache = TextFeatureCache(20_000, model.textual_encoder.hidden_size)
    g = torch.Generator().manual_seed(0)
    b = args.batch_size
    # A fixed small set of pairs, repeated: the loss must fall when the step works.
    video = torch.randn(b, 3, 8, args.crop_size, args.crop_size, generator=g).to(dev)
    ids = torch.randint(1000, 30000, (b, 64), generator=g)
    ids[:, 24:] = 0
    ids[:, 0], ids[:, 23] = 101, 102
    batch = {
        "video": video,
        "input_ids": ids.to(dev),
        "attention_mask": (ids > 0).long().to(dev),
        "index": torch.arange(b, device=dev),
    }
    losses, times = [], []
    for step in range(args.steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = pretrain_step(
            ddp,
            loss_fn,
            opt,
            batch,
            text_cache=cache,
            amp_dtype=torch.bfloat16,
            clip_norm=20.0,
            memory_format=torch.channels_last_3d,
            generator=negative_generator(0, 0, step, 0, device=dev),
        )
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        losses.append(round(out.terms["loss"], 4))
    emit(
        check="ddp_pretrain_steps",
        batch_size=b,
        losses=losses,
        finite=all(v == v for v in losses),
        loss_fell=losses[-1] < losses[0],
        median_step_s=round(sorted(times[2:])[len(times[2:]) // 2], 4),
        peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if dev.type == "cuda"
        else None,
    )
    tdist.destroy_process_group()

    for bs, crop in sizes:
        emit(
            check="bench_step",
            **bench_step(args.arch, bs, 8, crop, device=str(dev), steps=5, warmup=2),
        )


if __name__ == "__main__":
    main()
