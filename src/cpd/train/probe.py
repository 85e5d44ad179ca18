"""``mode: linear_features``: the linear probe on features extracted once.

The protocol is cpd's linear probe, ``mode: linear`` (a frozen encoder in eval mode, a linear
classifier on its pooled features, the multi-view test), not the official code's
(``mode: linear_official``: BatchNorm in train mode, dropout 0.8), computed orders of
magnitude faster than training the classifier through the encoder epoch after epoch:

1. Training features: ``probe.clips_per_video`` augmented clips per training video (clip k
   drawn as in epoch k of training, from ``(seed, k, index)``), each through the encoder in
   eval mode once; each clip is one sample.
2. A linear classifier on standardised features: full-batch L-BFGS on the L2-regularised
   cross-entropy (a convex problem, started from zero: deterministic), or mini-batch SGD. The
   standardisation is folded back into ``fc``, so the export is a plain classifier that
   ``cpd test`` reads.
3. Test: every test video's ``num_clips x num_crops`` view features (the ``cpd test``
   machinery, exact under DDP). ``probe.test_average: scores`` (default) classifies each view
   and averages the softmax over views, the same protocol as the finetuning test;
   ``features`` averages the view features first (30x less memory; numbers differ slightly).

Extracted features are saved in ``run.out/features.pt`` with the settings that produced them; a
rerun with the same encoder, data and clip settings reuses them (to try other solvers or
regularisation in seconds).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cpd.config import to_dict
from cpd.errors import CheckpointError
from cpd.train.amp import autocast_context, resolve_amp
from cpd.train.checkpoint import atomic_save, read_checkpoint
from cpd.train.finetune_build import FinetuneData, build_classifier, build_data
from cpd.train.finetune_config import FinetuneConfig, resolved_lr
from cpd.train.finetune_eval import clip_outputs, multiview_test, report, test_metrics
from cpd.train.log import RunLogger
from cpd.train.run import Env

__all__ = ["extract_clip_features", "fit_linear", "linear_probe", "score_views"]

FEATURES = "features.pt"


def extract_clip_features(
    encoder: Any, dataset: Any, env: Env, *, clips_per_video: int, batch_size: int,
    workers: int = 0, amp_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(features [K*N, D] float32, labels [K*N])`` of K training clips per video (clip-major),
    exact under DDP (collective: call on every rank)."""
    runs = [clip_outputs(encoder.forward_features, dataset, env, dim=encoder.num_features,
                         batch_size=batch_size, workers=workers, amp_dtype=amp_dtype, epoch=k)
            for k in range(clips_per_video)]  # fmt: skip
    return torch.cat([f for f, _ in runs]), torch.cat([y for _, y in runs])


def fit_linear(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, solver: str = "lbfgs",
    weight_decay: float = 1e-4, max_iter: int = 500, epochs: int = 100, lr: float = 0.1,
    momentum: float = 0.9, batch_size: int = 256, seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Multinomial logistic regression on ``features [n, D]``; returns ``(weight [C, D],
    bias [C])`` for the RAW features (standardisation folded in)."""
    x = features.double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    z = ((x - mean) / std).float()
    w = torch.zeros(num_classes, z.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)

    def objective(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(xb @ w.T + b, yb) + 0.5 * weight_decay * (w * w).sum()

    if solver == "lbfgs":
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                                tolerance_grad=1e-9, tolerance_change=1e-12,
                                line_search_fn="strong_wolfe")  # fmt: skip

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = objective(z, labels)
            loss.backward()
            return loss

        opt.step(closure)
    elif solver == "sgd":
        opt2 = torch.optim.SGD([w, b], lr=lr, momentum=momentum)
        steps_per_epoch = max(math.ceil(len(z) / batch_size), 1)
        for epoch in range(epochs):
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)  # order from (seed, epoch)
            order = torch.randperm(len(z), generator=g)
            for s in range(steps_per_epoch):
                t = (epoch + s / steps_per_epoch) / epochs
                for group in opt2.param_groups:
                    group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * t))
                sel = order[s * batch_size : (s + 1) * batch_size]
                opt2.zero_grad()
                objective(z[sel], labels[sel]).backward()
                opt2.step()
    else:
        raise ValueError(f"solver must be 'lbfgs' or 'sgd', got {solver!r}")
    with torch.no_grad():
        weight = w.double() / std
        bias = b.double() - weight @ mean
    return weight.float(), bias.float()


def score_views(values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                average: str, scores: str = "logits") -> torch.Tensor:  # fmt: skip
    """Video scores ``[N, C]`` from per-video view features ``values`` (``[N, V*D]`` when
    ``average == "scores"``: the mean of the views' logits, or of their softmax with
    ``scores="softmax"``; ``[N, D]`` for "features": the scores of the mean feature). NaN rows
    (failed videos) stay NaN."""
    d = weight.shape[1]
    if average == "scores":
        views = values.reshape(len(values), -1, d).double()
        logits = views @ weight.double().T + bias.double()
        return (logits.softmax(-1) if scores == "softmax" else logits).mean(1)
    logits = values.double() @ weight.double().T + bias.double()
    return logits.softmax(-1) if scores == "softmax" else logits


def _feature_key(cfg: FinetuneConfig) -> dict[str, Any]:
    """The settings that determine the extracted features."""
    return {"init": str(Path(cfg.model.init).resolve()) if cfg.model.init != "random" else
            f"random:{cfg.run.seed}:{cfg.model.arch}:{cfg.model.base_width}:"
            f"{cfg.model.temporal_stages}",
            "data": to_dict(cfg.data) | {"workers": None}, "test": to_dict(cfg.test),
            "clips_per_video": cfg.probe.clips_per_video,
            "test_average": cfg.probe.test_average, "seed": cfg.run.seed}  # fmt: skip


def _features(cfg: FinetuneConfig, data: FinetuneData, env: Env, model: Any,
              run_dir: Path, logger: RunLogger) -> dict[str, Any]:  # fmt: skip
    """Train and test features: read from ``features.pt`` when its settings match."""
    path, key = run_dir / FEATURES, _feature_key(cfg)
    if path.exists() and cfg.run.resume != "never":
        try:
            saved = read_checkpoint(path)
        except CheckpointError as exc:
            logger.message(f"{exc}; extracting the features again")
        else:
            if saved.get("key") == key:
                logger.message(f"reusing the features in {path}")
                return saved
    model.eval()
    amp = resolve_amp(cfg.optim.amp, env.device)
    per_rank = max(cfg.optim.batch_size // env.world_size, 1)
    train_x, train_y = extract_clip_features(
        model, data.train, env, clips_per_video=cfg.probe.clips_per_video, batch_size=per_rank,
        workers=cfg.data.workers, amp_dtype=amp)  # fmt: skip
    d = model.num_features
    views = cfg.test.num_clips * cfg.test.num_crops
    mean_views = cfg.probe.test_average == "features"

    def fn(v: torch.Tensor) -> torch.Tensor:
        with autocast_context(env.device, amp):
            f = model.forward_features(v).float()
        return f.mean(0) if mean_views else f.flatten()

    with torch.no_grad():
        outputs = multiview_test(cfg, data, env, fn, d if mean_views else views * d)
    saved = {"key": key, "train_x": train_x, "train_y": train_y,
             "test_values": outputs.values.float(), "test_failed": outputs.failed}  # fmt: skip
    if env.main:
        atomic_save({**saved, "test_failed": [[i, p, r] for i, (p, r) in outputs.failed.items()]},
                    path)  # fmt: skip
    return saved


class _Outputs:
    """The parts of :class:`cpd.eval.multiview.VideoOutputs` that :func:`test_metrics` reads."""

    def __init__(self, n: int, failed: dict[int, tuple[str, str]]) -> None:
        self.failed = failed
        self.ok = torch.ones(n, dtype=torch.bool)
        self.ok[list(failed)] = False


def linear_probe(cfg: FinetuneConfig, env: Env, run_dir: Path, logger: RunLogger,
                 info: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Extract (or reuse) features, fit the classifier, test, report; see the module doc."""
    data = build_data(cfg, progress=cfg.run.progress and env.main, val=False)
    torch.manual_seed(cfg.run.seed)
    model = build_classifier(cfg, data.num_classes).to(env.device).eval()
    feats = _features(cfg, data, env, model, run_dir, logger)
    failed = feats["test_failed"]
    if isinstance(failed, list):  # as stored on disk
        failed = {int(i): (p, r) for i, p, r in failed}
    p = cfg.probe
    weight, bias = fit_linear(
        feats["train_x"], feats["train_y"], data.num_classes, solver=p.solver,
        weight_decay=p.weight_decay, max_iter=p.max_iter, epochs=cfg.schedule.epochs,
        lr=resolved_lr(cfg), momentum=cfg.optim.momentum, batch_size=cfg.optim.batch_size,
        seed=cfg.run.seed)  # fmt: skip
    if env.world_size > 1:  # one classifier everywhere, whatever the solver's float noise
        weight, bias = weight.to(env.device), bias.to(env.device)
        for t in (weight, bias):
            torch.distributed.broadcast(t, 0)
        weight, bias = weight.cpu(), bias.cpu()
    with torch.no_grad():
        model.fc.weight.copy_(weight.to(env.device))
        model.fc.bias.copy_(bias.to(env.device))
    train_logits = feats["train_x"] @ weight.T + bias
    train_top1 = float((train_logits.argmax(1) == feats["train_y"]).double().mean())
    values = feats["test_values"]
    scores = score_views(values, weight, bias, p.test_average, cfg.test.scores)
    test = test_metrics(scores, _Outputs(len(values), failed), data) if cfg.test.enabled else None
    final = {"train_clip_top1": train_top1, "train_samples": len(feats["train_y"]),
             "feature_dim": int(weight.shape[1])}  # fmt: skip
    logger.write("probe", 0, **final, **({"test_top1": test["top1"]} if test else {}))
    extra = {"final": final, "probe": to_dict(p) | {"standardised": True}}
    return report(cfg, env, run_dir, logger, model.cpu(), info, test, extra)
