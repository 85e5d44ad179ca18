"""Multi-view action recognition test of a classifier (finetuned or linear-probed).

Each test video gives --num-clips uniformly spaced clips x --num-crops crops (10 x 3 by default,
the paper's protocol; short side resized to --crop-size, crops along the long side). The
video's score is the mean of its views' raw logits, as the official test.py averages them
(--scores softmax: the mean of the views' softmax probabilities instead); its prediction is
the argmax. Reported per split: video-level top-1 / top-5, mean class accuracy; with several
--fold values also their mean ± std (the paper's "average of 3 splits", sample std).

Clip geometry and normalisation (--num-frames, --stride, --crop-size, --fps, --mean, --std)
default to what the checkpoint records: an export's config.json "preprocessing" (written by
cpd pretrain / cpd finetune: the training clip, and the test size as --crop-size, e.g. 256 for
the finetune_ucf101_r50 preset), a training checkpoint's run config. Checkpoints that record
none (official ones, older exports) fall back to 16 frames, stride 4, crop 112, 30 fps,
mean 0.45 / std 0.225. Flags given win; results.json says where each value came from.

CHECKPOINT must be a classifier: an export or training checkpoint with num_classes > 0, or an
official CPD-Video finetuning checkpoint. A pretrained CPD model has no classifier: finetune
it (cpd finetune) or classify zero-shot (cpd zeroshot).

Videos that fail to decode are not replaced: they are counted and listed in results.json and
the table, and accuracies are over the videos that were evaluated.

Writes to -o/--out (default runs/test): results.json (metrics, protocol, checkpoint, version), and per split
predictions_split<N>.csv (video_id, true_label, predicted_label, correct, top5, status; one
row per test video), scores_split<N>.npy (float32 [videos, classes], NaN rows for failures),
confusion_split<N>.png.

--official-json PATH also writes the official prediction file: {"results": {video_id:
[{"label": class name, "score": video score}]}} with the top-1 class of each video that was
evaluated (the official test.py writes topk(k=1) of the mean logits; main.py dumps it to
<result_path>/val.json). Name it DIR/val.json and the official scorer reads it:
  python evaluation/evaluate_ucf101.py --dataset ucf101_01.json --pred_results DIR
That scorer counts videos without a prediction (here: videos that failed to decode) as wrong.
With several --fold values PATH must hold {split} (e.g. eval/split{split}/val.json).

Several processes: torchrun --nproc_per_node N -m cpd test ... gives each process whole videos
and gathers the scores exactly: the result equals one process's.

Example:
  cpd test runs/ft/export --dataset ucf101 --video-root /data/UCF-101 --fold 1 2 3 -o eval/ \
      --official-json eval/official{split}/val.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from cpd.commands._evaluation import add_dataset_options, add_view_options, run_command
from cpd.commands._options import add_run_options
from cpd.eval.common import pct

HELP = "multi-view (10x3) action recognition test of a finetuned classifier"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cpd test``."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="classifier to test")
    add_dataset_options(parser, several_folds=True)
    add_view_options(parser, clips=10, crops=3)
    parser.add_argument("--scores", default="logits", choices=("logits", "softmax"),
                        help="what is averaged over a video's views: logits (default; the "
                        "official test.py's mean of the raw outputs) or softmax (mean of the "
                        "views' probabilities)")  # fmt: skip
    parser.add_argument("--official-json", metavar="PATH",
                        help="also write the official prediction JSON ({'results': {video_id: "
                        "[{'label', 'score'}]}}, top-1) that evaluation/evaluate_ucf101.py "
                        "scores; name it DIR/val.json; {split} in PATH is the fold number "
                        "(needed with several --fold values)")  # fmt: skip
    add_run_options(parser, out="runs/test", batch_size=4)


def load_classifier(path: str, device: Any) -> Any:
    """:func:`cpd.load_model`, insisting on a video classifier (``ResNet3d`` with ``fc``)."""
    from cpd.errors import CheckpointError
    from cpd.models import ResNet3d, load_model

    model = load_model(path, device)
    if not isinstance(model, ResNet3d) or not model.num_classes:
        raise CheckpointError(
            f"{path}: a CPD pretraining model without a classifier; finetune it first "
            "(cpd finetune) or classify from text alone (cpd zeroshot)"
        )
    return model


def write_predictions(path: Path, split: Any, outputs: Any, classes: list[str]) -> None:
    """One CSV row per test video: prediction and top-5, or the decode failure."""
    k = min(5, len(classes))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "true_label", "predicted_label", "correct", "top5", "status"])
        for record, row in zip(split.records, outputs.values, strict=True):
            if record.index in outputs.failed:
                reason = outputs.failed[record.index][1]
                writer.writerow(
                    [record.video_id, record.label_name, "", "", "", f"failed: {reason}"]
                )
                continue
            top = row.topk(k).indices.tolist()
            writer.writerow([record.video_id, record.label_name, classes[top[0]],
                             int(top[0] == record.label), " ".join(classes[i] for i in top), "ok"])  # fmt: skip


def official_predictions(split: Any, outputs: Any, k: int = 1) -> dict[str, Any]:
    """The official prediction file's content: ``{"results": {video_id: [{"label": class,
    "score": float}, ...]}}`` with the top-``k`` classes of each evaluated video, best first,
    as test.py's ``calculate_video_results`` builds it (k=1 there) and main.py dumps it.
    Videos that failed to decode get no entry (the official dataset drops unreadable videos;
    its scorer counts a video without prediction as a miss)."""
    results: dict[str, list[dict[str, Any]]] = {}
    for record, row in zip(split.records, outputs.values, strict=True):
        if record.index in outputs.failed:
            continue
        if record.video_id in results:
            from cpd.errors import DataError

            raise DataError(f"video id {record.video_id!r} appears twice: the official "
                            "prediction file is keyed by video id")  # fmt: skip
        top = row.topk(min(k, len(split.classes)))
        results[record.video_id] = [
            {"label": split.classes[int(i)], "score": float(v)}
            for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ]
    return {"results": results}


def official_json_path(template: str, split_no: int, several: bool) -> Path:
    """``--official-json`` for one split: ``{split}`` replaced by the split number."""
    from cpd.errors import DataError

    if several and "{split}" not in template:
        raise DataError("--official-json with several --fold values needs {split} in the path "
                        "(e.g. eval/split{split}/val.json)")  # fmt: skip
    return Path(template.replace("{split}", str(split_no)))


def evaluate_split(model: Any, args: argparse.Namespace, env: Any, split_no: int) -> dict:
    """Test one split; on rank 0 also write its predictions, scores and confusion matrix."""
    import numpy as np
    import torch

    from cpd.commands._evaluation import load_split_of, per_process_batch, view_options
    from cpd.errors import DataError
    from cpd.eval.multiview import (
        classification_metrics,
        classifier_scores,
        collect_video_outputs,
        multiview_dataset,
    )
    from cpd.eval.plots import plot_confusion_matrix

    split = load_split_of(args, split_no)
    if not len(split):
        raise DataError(f"split {split_no}: no {args.split} videos")
    if split.num_classes != model.num_classes:
        raise DataError(f"split {split_no} has {split.num_classes} classes but the classifier "
                        f"has {model.num_classes} outputs")  # fmt: skip
    dataset = multiview_dataset(split.records, **view_options(args))
    outputs = collect_video_outputs(dataset, classifier_scores(model, args.scores), env,
                                    dim=model.num_classes,
                                    batch_size=per_process_batch(args.batch_size, env.world_size),
                                    workers=args.workers, desc=f"test split {split_no}")  # fmt: skip
    ok = outputs.ok
    labels = torch.tensor([r.label for r in split.records])
    result: dict[str, Any] = {"split": split_no, "num_videos": len(split),
                              "num_evaluated": int(ok.sum()), "num_failed": len(outputs.failed),
                              "failed": [{"video_id": split.records[i].video_id, "path": p,
                                          "reason": r} for i, (p, r) in outputs.failed.items()]}  # fmt: skip
    if result["num_evaluated"]:
        result.update(classification_metrics(outputs.values[ok], labels[ok], split.num_classes))
    else:
        result.update(top1=float("nan"), top5=float("nan"), mean_class_accuracy=float("nan"))
    if env.main and args.official_json:
        path = official_json_path(args.official_json, split_no, len(args.fold) > 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(official_predictions(split, outputs)) + "\n", encoding="utf-8")
        result["official_json"] = str(path)
    if env.main and args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_predictions(out / f"predictions_split{split_no}.csv", split, outputs,
                          list(split.classes))  # fmt: skip
        np.save(out / f"scores_split{split_no}.npy", outputs.values.float().numpy())
        if "confusion_matrix" in result:
            plot_confusion_matrix(result["confusion_matrix"], split.classes,
                                  out / f"confusion_split{split_no}.png",
                                  title=f"split {split_no}: top-1 {pct(result['top1'])}%")  # fmt: skip
    result["classes"] = list(split.classes)
    return result


_SUMMARY = ("top1", "top5", "mean_class_accuracy")


def format_results(splits: list[dict], summary: dict | None) -> str:
    """The table: one row per split, then mean ± std over splits."""
    head = f"{'split':<12}{'videos':>8}{'failed':>8}{'top-1 %':>10}{'top-5 %':>10}{'class %':>10}"
    lines = [head, "-" * len(head)]
    for s in splits:
        lines.append(f"{s['split']:<12}{s['num_videos']:>8}{s['num_failed']:>8}{pct(s['top1']):>10}"
                     f"{pct(s['top5']):>10}{pct(s['mean_class_accuracy']):>10}")  # fmt: skip
    if summary is not None:  # the paper's "average of 3 splits", with the sample std
        for name, suffix in (("mean", ""), ("std", "_std")):
            cells = "".join(f"{pct(summary[m + suffix]):>10}" for m in _SUMMARY)
            lines.append(f"{name:<28}{cells}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    import torch

    from cpd.commands._evaluation import resolve_view_arguments, view_protocol
    from cpd.eval.common import close_distributed, init_distributed, results_header, write_results
    from cpd.eval.metrics import mean_std

    if args.official_json and len(args.fold) > 1:
        official_json_path(args.official_json, 1, several=True)  # fail before any work
    env = init_distributed(args.device, args.quiet)
    try:
        model = load_classifier(args.checkpoint, env.device)
        sources = resolve_view_arguments(args, model)
        with torch.inference_mode():
            splits = [evaluate_split(model, args, env, s) for s in args.fold]
    finally:
        close_distributed(env)
    summary = None
    if len(splits) > 1:
        summary = {}
        for m in _SUMMARY:
            values = [s[m] for s in splits]
            ok = all(v == v for v in values)  # a split where every video failed has NaN
            summary[m], summary[m + "_std"] = mean_std(values) if ok else (math.nan, math.nan)
    if not env.main:
        return 0
    results = results_header("test", args.checkpoint, env)
    results["protocol"] = {"dataset": args.dataset, "folds": list(args.fold), "split": args.split,
                           **view_protocol(args, sources), "scores": args.scores}  # fmt: skip
    results["protocol"].update(score_average="mean over views", seeds=None,
                               accuracy_over="videos that decoded")  # fmt: skip
    results["splits"] = {str(s["split"]): s for s in splits}
    results["mean_over_splits"] = summary
    write_results(args.out, results)
    print(format_results(splits, summary))
    if any(s["num_failed"] for s in splits):
        print("some videos failed to decode and were left out: see results.json", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """Test; exit status 2 for bad input (missing files, a checkpoint without classifier)."""
    return run_command("test", _run, args)
