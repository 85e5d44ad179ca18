"""Zero-shot action recognition: classify videos from the text of their class names alone.

Class names become text (CamelCase and underscores split, lower-cased: "ApplyEyeMakeup" ->
"apply eye makeup"), put through prompt templates ("a video of a person {}.", "a video of
{}.", "{}", ... or your own --templates FILE, one per line with one {}); each class's
normalised prompt embeddings are averaged and renormalised. A video's embedding is the
renormalised mean of its views' embeddings; the predicted class has the highest cosine.
Views default to one centre clip x one centre crop, for speed (--num-clips 10 --num-crops 3
for the full test protocol). --num-frames, --stride, --crop-size, --fps, --mean and --std
default to the checkpoint's preprocessing (an export's config.json, a training checkpoint's
run config: the clips the model was trained on), else 8 frames, stride 4, crop 112, 30 fps,
mean 0.45 / std 0.225; flags given win. Ties count against the video (a collapsed model that
scores every class alike gets 0, not the share of the first class).

Protocols: all classes; and with --random-splits N, N random 50/50 class splits (split i
drawn from the seed pair (--seed, i), recorded with the held-out classes), each classifying the held-out half's videos among those
classes only, reported as mean ± std. Chance levels are printed beside every figure.

CHECKPOINT must be a CPD model with its text tower (an export, a cpd pretrain checkpoint or
an official pretraining checkpoint). Writes results.json to -o/--out (default runs/zeroshot). Several processes:
torchrun --nproc_per_node N -m cpd zeroshot ... (exact, as cpd test).

Example:
  cpd zeroshot runs/ig/export --dataset ucf101 --video-root /data/UCF-101 --random-splits 10
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cpd.commands._evaluation import add_dataset_options, add_view_options, run_command
from cpd.commands._options import add_run_options
from cpd.eval.common import pct

HELP = "zero-shot action recognition from class-name text (all classes, random 50/50 splits)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cpd zeroshot``."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="CPD model with text tower")
    add_dataset_options(parser, several_folds=False)
    add_view_options(parser, clips=1, crops=1, frames=8)
    g = parser.add_argument_group("zero-shot")
    g.add_argument("--templates", help="prompt templates file, one per line with one {}")
    g.add_argument("--random-splits", type=int, default=0, metavar="N",
                   help="also evaluate N random 50/50 class splits (default 0)")  # fmt: skip
    add_run_options(parser, out="runs/zeroshot", seed=True, batch_size=4)


def format_results(results: dict) -> str:
    """One row per protocol: top-1 / top-5 with chance beside them."""
    head = f"{'protocol':<22}{'videos':>8}{'classes':>9}{'top-1 %':>10}{'chance':>8}{'top-5 %':>10}{'chance':>8}"
    lines = [head, "-" * len(head)]
    rows = [("all classes", results["all_classes"])]
    rows += [(f"random split {i}", s) for i, s in enumerate(results["random_splits"])]
    for name, m in rows:
        lines.append(f"{name:<22}{m['num_videos']:>8}{m['num_classes']:>9}{pct(m['top1']):>10}"
                     f"{pct(m['chance_top1']):>8}{pct(m['top5']):>10}{pct(m['chance_top5']):>8}")  # fmt: skip
    if results.get("random_splits_mean"):
        s = results["random_splits_mean"]
        lines.append(f"{'random splits mean':<39}{pct(s['top1']):>10}{pct(s['chance_top1']):>8}"
                     f"{pct(s['top5']):>10}{pct(s['chance_top5']):>8}")  # fmt: skip
        lines.append(f"{'random splits std':<39}{pct(s['top1_std']):>10}{'':>8}"
                     f"{pct(s['top5_std']):>10}")  # fmt: skip
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    import torch

    from cpd.commands._evaluation import (
        load_split_of,
        per_process_batch,
        resolve_view_arguments,
        view_options,
        view_protocol,
    )
    from cpd.errors import DataError
    from cpd.eval.common import close_distributed, init_distributed, results_header, write_results
    from cpd.eval.metrics import mean_std
    from cpd.eval.multiview import collect_video_outputs, multiview_dataset
    from cpd.eval.zeroshot import (
        DEFAULT_TEMPLATES,
        class_text_embeddings,
        random_class_splits,
        read_templates,
        video_embedding_fn,
        zeroshot_metrics,
    )
    from cpd.models import load_cpd_model

    templates = read_templates(args.templates) if args.templates else list(DEFAULT_TEMPLATES)
    split_no = args.fold
    split = load_split_of(args, split_no)
    if not len(split):
        raise DataError(f"split {split_no}: no {args.split} videos")
    env = init_distributed(args.device, args.quiet)
    try:
        model = load_cpd_model(args.checkpoint, env.device)
        sources = resolve_view_arguments(args, model)
        with torch.inference_mode():
            class_emb = class_text_embeddings(model.encode_text, split.classes, templates).cpu()
            dataset = multiview_dataset(split.records, **view_options(args))
            out = collect_video_outputs(dataset, video_embedding_fn(model), env,
                                        dim=model.embed_dim,
                                        batch_size=per_process_batch(args.batch_size,
                                                                     env.world_size),
                                        workers=args.workers, desc="zero-shot")  # fmt: skip
    finally:
        close_distributed(env)
    if not env.main:
        return 0
    ok = out.ok
    if not bool(ok.any()):
        raise DataError("no video could be decoded")
    labels = torch.tensor([r.label for r in split.records])[ok]
    emb = out.values[ok]
    results = results_header("zeroshot", args.checkpoint, env)
    held_out = random_class_splits(split.num_classes, args.random_splits, args.seed)
    results["protocol"] = {"dataset": args.dataset, "split": args.split,
                           **view_protocol(args, sources)}  # fmt: skip
    results["protocol"].update(fold=split_no, templates=templates, seed=args.seed,
                               random_splits=args.random_splits,
                               class_texts=_texts(split.classes))  # fmt: skip
    results["seeds"] = {"random_splits": [[args.seed, i] for i in range(args.random_splits)]}
    results["num_failed"] = len(out.failed)
    results["failed"] = [{"path": p, "reason": r} for p, r in out.failed.values()]
    results["all_classes"] = zeroshot_metrics(emb, labels, class_emb)
    results["random_splits"] = [
        dict(zeroshot_metrics(emb, labels, class_emb, classes), held_out_classes=classes)
        for classes in held_out
    ]
    if held_out:
        mean = {}
        for m in ("top1", "top5", "chance_top1", "chance_top5"):
            mean[m], mean[m + "_std"] = mean_std(s[m] for s in results["random_splits"])
        results["random_splits_mean"] = mean
    write_results(args.out, results)
    print(format_results(results))
    if out.failed:
        print(f"{len(out.failed)} videos failed to decode and were left out", file=sys.stderr)
    return 0


def _texts(classes: Any) -> list[str]:
    from cpd.eval.zeroshot import class_name_to_text

    return [class_name_to_text(c) for c in classes]


def run(args: argparse.Namespace) -> int:
    """Evaluate; exit status 2 for bad input."""
    return run_command("zeroshot", _run, args)
