"""Per-rank memory of the contrastive losses at a large training-set size N, measured.

Each configuration runs in a fresh Python process (so that its peak resident set is its own):
it builds the loss for ``--rows`` training pairs, then runs ``--steps`` loss steps the way
``cpd pretrain`` does (forward with ``update_memory=False``, backward, then the bank update)
on a local batch of ``--batch`` random unit embeddings, with ``--negatives`` negatives.

Configurations:

* ``nce_bfloat16`` / ``nce_float16`` / ``nce_float32``: :class:`cpd.MemoryBankNCELoss`, two
  ``N x dim`` banks stored in that type;
* ``infonce``: :class:`cpd.InfoNCELoss` (no per-sample state: memory independent of N);
* ``text_cache``: a :class:`cpd.train.step.TextFeatureCache` of N x ``--hidden`` fp16 rows,
  filled for ``--steps`` batches only (it allocates its rows lazily, so the resident memory is
  that of the rows filled, not N x hidden).

Prints one JSON line per configuration, then a table. Peak RSS is ``VmHWM`` of the child
process (``ru_maxrss`` where there is no ``/proc``). ``alloc_rss_bytes`` is the resident memory
that building the loss added; ``init_extra_bytes`` what building it held on top of its banks at
its peak (an N-sized temporary would show here); ``step_extra_bytes`` what the steps added on
top of the built loss (the peak is reset in between through ``/proc/self/clear_refs``; null
where that is not possible). Step times are wall seconds and CPU seconds of the process (the
latter less sensitive to other load). A configuration whose estimated need exceeds the memory
available now is skipped and says so (``--force`` runs it anyway); ``--steps 0`` measures the
allocation only.

``--estimate`` also prints the computed per-rank table for 300k / 10M / 100M pairs (banks,
checkpoint, tokenised captions, text-feature cache) for the paper model (the preset
``pretrain_instagram_r50``, ``src/cpd/configs/pretrain_instagram_r50.yaml``: 3D ResNet-50 +
DistilBERT).

    python benchmarks/memory_scale.py                       # N = 10M, the default configs
    python benchmarks/memory_scale.py --quick               # small N: a smoke test (seconds)
    python benchmarks/memory_scale.py --configs nce_float32 --rows 5000000
    python benchmarks/memory_scale.py --estimate --configs  # the computed table only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

CONFIGS = ("nce_bfloat16", "nce_float16", "infonce", "text_cache", "nce_float32")
DEFAULT_CONFIGS = ("nce_bfloat16", "nce_float16", "infonce", "text_cache", "nce_float32")
GB = 1e9


# --- measurement in the child process ------------------------------------------------------


def _status_bytes(key: str) -> int | None:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in bytes, or None without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """The current resident set size (0 where it cannot be read)."""
    return _status_bytes("VmRSS") or 0


def peak_rss_bytes() -> int:
    """The peak resident set size of this process so far."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux: ``/proc/self/clear_refs``); False if not."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _unit_rows(batch: int, dim: int, seed: int) -> Any:
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, dim, generator=g), dim=1).requires_grad_(True)


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Build one configuration, run its steps, and return the measurements."""
    import torch

    from cpd.losses import InfoNCELoss, MemoryBankNCELoss, negative_generator

    name, n, dim, b, k = args.child, args.rows, args.dim, args.batch, args.negatives
    torch.manual_seed(0)
    _unit_rows(b, dim, 0).sum().backward()  # warm up autograd before the baseline
    baseline = rss_bytes()
    out: dict[str, Any] = {"config": name, "rows": n, "dim": dim, "batch": b, "steps": args.steps}
    t0 = time.perf_counter()
    scoring = "none"
    gathers = [0]
    if name.startswith("nce_"):
        dtype = getattr(torch, name.removeprefix("nce_"))
        loss = MemoryBankNCELoss(n, dim, num_negatives=k, bank_dtype=dtype, seed=0)
        banks = (loss.video_bank, loss.text_bank)
        bank_bytes = sum(bank.memory.nbytes for bank in banks)
        for bank in banks:  # count sampled-row gathers: the whole-bank way makes none
            real = bank.gather

            def counting(indices: Any, _real: Any = real) -> Any:
                gathers[0] += 1
                return _real(indices)

            bank.gather = counting  # type: ignore[method-assign]
        out.update(
            loss="MemoryBankNCELoss", bank_dtype=str(dtype).removeprefix("torch."), negatives=k
        )
    elif name == "infonce":
        loss = InfoNCELoss()
        bank_bytes = 0
        out.update(loss="InfoNCELoss", bank_dtype=None, negatives=None)
    elif name == "text_cache":
        from cpd.train.step import TextFeatureCache

        loss = TextFeatureCache(n, args.hidden)
        bank_bytes = 0
        out.update(
            loss="TextFeatureCache",
            bank_dtype=None,
            cache_dtype="float16",
            negatives=None,
            hidden=args.hidden,
            cache_full_bytes=loss.nbytes,
        )
    else:
        raise SystemExit(f"unknown configuration {name!r} (one of {', '.join(CONFIGS)})")
    init_s = time.perf_counter() - t0
    alloc_rss, alloc_peak = rss_bytes(), peak_rss_bytes()
    reset = reset_peak_rss()  # so that the steps' peak is their own
    steps: list[float] = []
    cpu_steps: list[float] = []
    g = torch.Generator().manual_seed(1)
    for step in range(args.steps):
        video, text = _unit_rows(b, dim, 2 * step + 1), _unit_rows(b, dim, 2 * step + 2)
        idx = torch.randint(n, (b,), generator=g)
        t, cpu = time.perf_counter(), time.process_time()
        if name.startswith("nce_"):
            before = gathers[0]
            terms = loss(
                video, text, idx, generator=negative_generator(0, 0, step, 0), update_memory=False
            )
            scoring = "sampled rows" if gathers[0] > before else "whole bank"
            terms["loss"].backward()
            loss.update_memory(video.detach(), text.detach(), idx)
        elif name == "infonce":
            terms = loss(video, text)
            terms["loss"].backward()
        else:
            encoder = _FakeTextEncoder(args.hidden)
            ids = torch.zeros(b, 8, dtype=torch.long)
            terms = {"loss": loss.pooled(encoder, ids, torch.ones_like(ids), idx).sum()}
        if not torch.isfinite(terms["loss"]).all():
            raise SystemExit(f"{name}: non-finite loss at step {step}")
        steps.append(time.perf_counter() - t)
        cpu_steps.append(time.process_time() - cpu)
    step_peak = peak_rss_bytes()
    out.update(
        scoring=scoring,
        bank_bytes=bank_bytes,
        baseline_rss_bytes=baseline,
        alloc_rss_bytes=alloc_rss - baseline,
        init_extra_bytes=max(0, alloc_peak - baseline - bank_bytes),
        step_extra_bytes=max(0, step_peak - alloc_rss) if reset else None,
        peak_rss_bytes=max(alloc_peak, step_peak),
        init_seconds=round(init_s, 3),
        step_seconds=[round(s, 4) for s in steps],
        step_seconds_median=round(statistics.median(steps), 4) if steps else None,
        step_cpu_seconds_median=round(statistics.median(cpu_steps), 4) if steps else None,
    )
    return out


class _FakeTextEncoder:
    """Stands in for a frozen text encoder: constant pooled features, no compute."""

    training = False

    def __init__(self, hidden: int) -> None:
        self.hidden = hidden

    def eval(self) -> _FakeTextEncoder:
        return self

    def train(self, mode: bool = True) -> _FakeTextEncoder:
        return self

    def encode_tokens(self, input_ids: Any, attention_mask: Any) -> Any:
        import torch

        return torch.ones(input_ids.shape[0], self.hidden)


# --- the parent: one subprocess per configuration ------------------------------------------


def mem_available_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo``, or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def needed_bytes(name: str, args: argparse.Namespace) -> int:
    """A generous estimate of a configuration's peak: state, runtime, per-step temporaries."""
    runtime = 10**9
    if args.steps > 0:  # fp32 copies of the B·(1 + K) sampled rows of both banks, and more
        runtime += 4 * args.batch * (1 + args.negatives) * args.dim * 4
    if name.startswith("nce_"):
        size = {"nce_float32": 4, "nce_float16": 2, "nce_bfloat16": 2}[name]
        return 2 * args.rows * args.dim * size + runtime
    if name == "text_cache":
        return args.rows + runtime
    return runtime


def run_config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``name`` in a fresh interpreter; returns its JSON record (or why it was skipped)."""
    need = needed_bytes(name, args)
    avail = mem_available_bytes()
    if not args.force and avail is not None and need > avail:
        return {
            "config": name,
            "rows": args.rows,
            "skipped": True,
            "reason": f"needs about {need / GB:.1f} GB, {avail / GB:.1f} GB available "
            "(--force runs it anyway)",
        }
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        name,
        "--rows",
        str(args.rows),
        "--dim",
        str(args.dim),
        "--batch",
        str(args.batch),
        "--negatives",
        str(args.negatives),
        "--steps",
        str(args.steps),
        "--hidden",
        str(args.hidden),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {
            "config": name,
            "rows": args.rows,
            "skipped": True,
            "reason": f"exit code {proc.returncode}: {' | '.join(tail)}",
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gb(x: float | None) -> str:
    return "-" if x is None else f"{x / GB:.2f}"


def print_table(records: list[dict[str, Any]]) -> None:
    """The measurements as a Markdown table (GB = 10^9 bytes)."""
    print(
        "| config | N | scoring | bank GB | peak RSS GB | init extra GB | step extra GB "
        "| init s | step s (median) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in records:
        if r.get("skipped"):
            print(f"| {r['config']} | {r['rows']:,} | skipped: {r['reason']} | | | | | | |")
            continue
        step_s = r["step_seconds_median"]
        print(
            f"| {r['config']} | {r['rows']:,} | {r['scoring']} | {_gb(r['bank_bytes'])} | "
            f"{_gb(r['peak_rss_bytes'])} | {_gb(r['init_extra_bytes'])} | "
            f"{_gb(r['step_extra_bytes'])} | {r['init_seconds']:.1f} | "
            f"{'-' if step_s is None else f'{step_s:.3f}'} |"
        )


# --- the computed table ----------------------------------------------------------------------


def paper_model_params() -> tuple[int, int]:
    """(all parameters, text-encoder parameters) of the paper preset's model."""
    import warnings

    from cpd.models import build_model
    from cpd.train.config import load_pretrain_config

    cfg = load_pretrain_config("pretrain_instagram_r50")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "built from its configuration with random weights"
        model = build_model(cfg.model)
    total = sum(p.numel() for p in model.parameters())
    text = sum(p.numel() for p in model.textual_encoder.parameters())
    return total, text


def estimate(
    rows: int, params: int, *, dim: int = 256, hidden: int = 768, max_tokens: int = 64
) -> dict[str, int]:
    """Per-rank bytes at N = ``rows``: banks (fp32 / 16-bit), checkpoint, captions, text cache.

    Checkpoint: both banks (the loss state) + fp32 model weights + SGD momentum (one fp32
    buffer per parameter once all train, i.e. stage II), ignoring the small rest.
    """
    banks32, banks16 = 2 * rows * dim * 4, 2 * rows * dim * 2
    model_optim = 2 * params * 4
    return {
        "rows": rows,
        "banks_fp32": banks32,
        "banks_16bit": banks16,
        "model_and_sgd": model_optim,
        "checkpoint_fp32": banks32 + model_optim,
        "checkpoint_16bit": banks16 + model_optim,
        "captions_manifest": rows * max_tokens * (4 + 1),  # int32 ids + uint8 mask
        "captions_streaming": 0,
        "text_cache": rows * hidden * 2 + rows,  # fp16 rows + the "filled" flags
    }


def print_estimates(params: int, text_params: int) -> None:
    """The computed table for 300k / 10M / 100M training pairs."""
    rows = [estimate(n, params) for n in (300_000, 10_000_000, 100_000_000)]
    print(json.dumps({"estimate": rows, "params": params, "text_params": text_params}))
    print(f"paper model: {params:,} parameters ({text_params:,} in the text encoder)")
    print("| per rank | " + " | ".join(f"N = {r['rows']:,}" for r in rows) + " |")
    print("| --- |" + " --- |" * len(rows))
    labels = {
        "banks_fp32": "memory banks, fp32",
        "banks_16bit": "memory banks, bf16 / fp16",
        "checkpoint_fp32": "checkpoint, fp32 banks",
        "checkpoint_16bit": "checkpoint, bf16 / fp16 banks",
        "captions_manifest": "tokenised captions (manifest)",
        "captions_streaming": "tokenised captions (streaming)",
        "text_cache": "text-feature cache (fp16)",
    }
    for key, label in labels.items():
        print(f"| {label} | " + " | ".join(f"{r[key] / GB:.2f} GB" for r in rows) + " |")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments; run the configurations (or one of them, as ``--child``)."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Configurations: " + ", ".join(CONFIGS),
    )
    ap.add_argument("--rows", type=int, default=10_000_000, help="N, training pairs")
    ap.add_argument("--dim", type=int, default=256, help="embedding size (bank row)")
    ap.add_argument("--batch", type=int, default=32, help="local batch per rank")
    ap.add_argument("--negatives", type=int, default=16384, help="K")
    ap.add_argument("--hidden", type=int, default=768, help="text-cache row (DistilBERT: 768)")
    ap.add_argument(
        "--steps", type=int, default=3, help="loss steps per configuration (0: allocation only)"
    )
    ap.add_argument(
        "--configs",
        nargs="*",
        default=list(DEFAULT_CONFIGS),
        choices=CONFIGS,
        metavar="CONFIG",
        help="configurations to run (default: all)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="N = 300,000 and K = 1024 (the sampled-rows path): seconds",
    )
    ap.add_argument("--force", action="store_true", help="run even where memory looks short")
    ap.add_argument(
        "--estimate",
        action="store_true",
        help="also print the computed table for 300k / 10M / 100M pairs",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.negatives = 300_000, 1024
    if args.child:
        print(json.dumps(run_child(args)), flush=True)
        return 0
    records = []
    for name in args.configs:
        record = run_config(name, args)
        print(json.dumps(record), flush=True)
        records.append(record)
    if records:
        print_table(records)
    if args.estimate:
        print_estimates(*paper_model_params())
    return 0


if __name__ == "__main__":
    sys.exit(main())
