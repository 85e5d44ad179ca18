"""``cpd finetune``'s one-clip validation, the final multi-view test and the report
(``results.json``, ``export/``, the printed table) that ``linear_features`` shares."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cpd.config import to_dict
from cpd.data import ActionDataset
from cpd.models import ResNet3d, save_model
from cpd.train.amp import autocast_context
from cpd.train.finetune_build import FinetuneData
from cpd.train.finetune_config import FinetuneConfig
from cpd.train.loader import make_loader
from cpd.train.log import RunLogger, format_table
from cpd.train.run import Env

log = logging.getLogger(__name__)


@torch.no_grad()  # not inference_mode: the linear probe fits on these outputs
def clip_outputs(
    fn: Any, dataset: ActionDataset, env: Env, *, dim: int, batch_size: int, workers: int = 0,
    amp_dtype: torch.dtype | None = None, epoch: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(fn(clip) [N, dim] float32, labels [N])`` of one clip of each of the N videos, in the
    dataset's order, exact under DDP.

    ``dataset`` gives either one view per video (``[1, 3, T, S, S]``: the centre clip) or one
    training-style clip (``[3, T, S, S]``, drawn from (seed, ``epoch``, index)). Collective
    under a process group (every rank runs its share; the outputs are gathered with their
    indices and the sampler's padded repeats dropped).
    """
    from cpd.eval import gather_embeddings

    loader = make_loader(dataset, batch_size=batch_size, train=False, seed=0, epoch=epoch,  # type: ignore[arg-type]
                         workers=workers, rank=env.rank, world_size=env.world_size)  # fmt: skip
    rows, labels, indices = [], [], []
    for batch in loader:
        video = batch["video"]
        if video.dim() == 6:  # [B, 1 view, 3, T, S, S]
            video = video.flatten(0, 1)
        with autocast_context(env.device, amp_dtype):
            rows.append(fn(video.to(env.device, non_blocking=True)).float())
        labels.append(batch["label"].to(env.device).float())
        indices.append(batch["index"].to(env.device))
    dev = env.device
    local = torch.cat(rows) if rows else torch.zeros(0, dim, device=dev)
    local_y = torch.cat(labels) if labels else torch.zeros(0, device=dev)
    local_i = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=dev)
    outputs, _ = gather_embeddings(local, local_i, num_samples=len(dataset))
    ys, _ = gather_embeddings(local_y, local_i, num_samples=len(dataset))
    return outputs.cpu(), ys.long().cpu()


def evaluate_clips(
    model: nn.Module, dataset: ActionDataset, env: Env, *, batch_size: int, workers: int = 0,
    amp_dtype: torch.dtype | None = None, epoch: int = 0,
) -> dict[str, float]:  # fmt: skip
    """Clip-level top-1 / top-5 of one clip of every video (:func:`clip_outputs`: the centre
    clip, or the official validation's random clip of ``epoch``), exact under DDP."""
    from cpd.eval import topk_accuracy

    was_training = model.training
    model.eval()
    n = model.num_classes
    scores, labels = clip_outputs(model, dataset, env, dim=n, batch_size=batch_size,
                                  workers=workers, amp_dtype=amp_dtype, epoch=epoch)  # fmt: skip
    model.train(was_training)
    ks = sorted({1, min(5, n)})
    acc = topk_accuracy(scores, labels, ks=ks)
    return {"top1": acc["top1"], "top5": acc[f"top{ks[-1]}"]}


def multiview_test(cfg: FinetuneConfig, data: FinetuneData, env: Env, fn: Any, dim: int) -> Any:
    """Run ``fn(views [V, 3, T, S, S]) -> [dim]`` over every test video with the ``cpd test``
    machinery (each rank whole videos, exact gather, failures reported, not replaced)."""
    from cpd.eval.multiview import collect_video_outputs, multiview_dataset

    t, d = cfg.test, cfg.data
    dataset = multiview_dataset(data.test, num_clips=t.num_clips, num_crops=t.num_crops,
                                num_frames=d.num_frames, stride=d.stride,
                                crop_size=t.crop_size or d.crop_size,
                                loader=data.cache.load_clips if data.cache else None)  # fmt: skip
    eval_env = dataclasses.replace(env, owns_group=False,
                                   show_progress=cfg.run.progress and env.main)  # fmt: skip
    return collect_video_outputs(dataset, fn, eval_env, dim=dim, batch_size=t.batch_size,
                                 workers=d.workers, desc="multi-view test")  # fmt: skip


def test_metrics(scores: torch.Tensor, outputs: Any, data: FinetuneData) -> dict[str, Any]:
    """Video-level metrics of ``scores [N, C]`` over the videos that decoded, and failures."""
    from cpd.eval.multiview import classification_metrics

    ok = outputs.ok
    labels = torch.tensor([r.label for r in data.test])
    result: dict[str, Any] = {"num_videos": len(data.test), "num_evaluated": int(ok.sum()),
                              "num_failed": len(outputs.failed),
                              "failed": [{"video_id": data.test[i].video_id, "path": p,
                                          "reason": r} for i, (p, r) in outputs.failed.items()]}  # fmt: skip
    if not result["num_evaluated"]:
        return {**result, "top1": math.nan, "top5": math.nan, "mean_class_accuracy": math.nan}
    metrics = classification_metrics(scores[ok], labels[ok], data.num_classes)
    metrics["per_class_accuracy"] = dict(zip(data.classes, metrics["per_class_accuracy"],
                                             strict=True))  # fmt: skip
    return {**result, **metrics}


def report(cfg: FinetuneConfig, env: Env, run_dir: Path, logger: RunLogger, model: ResNet3d,
           info: dict[str, Any], test: dict[str, Any] | None,
           extra: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """results.json, export/ and the printed table (rank 0); returns the results."""
    from cpd.eval.common import write_results

    t = cfg.test
    results = {
        "command": "finetune", "mode": cfg.mode, "init": cfg.model.init,
        "dataset": cfg.data.dataset, "fold": cfg.data.fold, "seed": cfg.run.seed,
        "protocol": {"num_clips": t.num_clips, "num_crops": t.num_crops,
                     "num_frames": cfg.data.num_frames, "stride": cfg.data.stride,
                     "crop_size": t.crop_size or cfg.data.crop_size, "scores": t.scores,
                     "video_score": "mean over views", "accuracy_over": "videos that decoded"},
        "test": test, **extra, **info, "config": to_dict(cfg),
    }  # fmt: skip
    if env.main:
        save_model(model, run_dir / "export", training_config=cfg)
        write_results(run_dir, results)
        shown: dict[str, Any] = {k: v for k, v in extra.get("final", {}).items()
                                 if isinstance(v, (int, float))}  # fmt: skip
        if test is not None:
            shown.update({f"test_{k}": test[k] for k in ("top1", "top5", "mean_class_accuracy")})
            shown.update(test_videos=test["num_videos"], test_failed=test["num_failed"])
        logger.message(format_table(shown, title=f"{cfg.mode} ({cfg.model.init})"))
        logger.message(f"weights exported to {run_dir / 'export'} (cpd test / cpd.load_model)")
    return results
