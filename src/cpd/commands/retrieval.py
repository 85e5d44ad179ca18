"""Text-to-video and video-to-text retrieval on a captioned set: R@1/5/10, median / mean rank.

Captions come from a manifest (--manifest: .jsonl / .csv / Instagram .json, as cpd pretrain
reads them) filtered to --split (default val); several captions of one video (same path) are
grouped: text->video asks for the caption's video, video->text for the best-ranked of the
video's captions. Video embeddings are the renormalised mean over --num-clips x --num-crops
views (default one centre clip, as pretraining validates); similarities are computed
--chunk-size query rows at a time. Chance levels are printed beside the recalls. Videos that
fail to decode are left out with their captions, and counted.

Ranks count ties against the query: 1 + the gallery items other than the true one that score
at least as high, so a collapsed model (one embedding for everything) gets R@1 = 0, not 100%.

--num-frames, --stride, --crop-size, --fps, --mean and --std default to the checkpoint's
preprocessing (an export's config.json, a training checkpoint's run config: the clips the
model was trained on), else 8 frames, stride 4, crop 112, 30 fps, mean 0.45 / std 0.225;
flags given win, and results.json records where each value came from.

CHECKPOINT must be a CPD model with its text tower. Writes results.json to -o/--out (default runs/retrieval).

The manifest is read as cpd pretrain reads it: --manifest-format (default auto,
from the content and suffix), --video-key (a column, or a template over the columns such as
'{videoid}.mp4'), --caption-key and --id-key name its columns; rows whose `status` is not
"success" (video2dataset) are left out and counted; --bad-rows skip leaves rows with problems
out, counts them and writes them to OUT/bad_rows.jsonl instead of stopping.

--shards reads webdataset shards instead (video2dataset's layout: {key}.mp4 with {key}.txt or a
"caption" in {key}.json); each sample's caption is the query for its own video.

Examples:
  cpd retrieval runs/synth/export --manifest data/synth/captions.jsonl
  cpd retrieval runs/synth/export --shards "val_shards/{00000..00003}.tar" -o eval/ret
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cpd.commands._evaluation import add_view_options, run_command
from cpd.commands._options import (
    add_deprecated,
    add_manifest_options,
    add_run_options,
    manifest_options,
)
from cpd.eval.common import pct

HELP = "text<->video retrieval (R@1/5/10, median / mean rank) on a captioned set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cpd retrieval``."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="CPD model with text tower")
    g = parser.add_argument_group("captions")
    add_manifest_options(g)
    g.add_argument("--shards", help="or webdataset shards (a directory, a brace pattern, a URL): "
                   "each sample's video against its own caption")  # fmt: skip
    g.add_argument("--split", default="val", metavar="NAME",
                   help="manifest split to use (default val); all: every pair")  # fmt: skip
    g.add_argument("--chunk-size", type=int, default=4096, help="query rows per similarity block")
    add_deprecated(g, "--captions", "--manifest", "manifest")
    add_deprecated(g, "--root", "--video-root", "video_root")
    add_deprecated(g, "--format", "--manifest-format", "manifest_format")
    add_view_options(parser, clips=1, crops=1, frames=8)
    add_run_options(parser, out="runs/retrieval", batch_size=4)


def manifest_protocol(args: argparse.Namespace) -> dict[str, Any]:
    """The manifest options as results.json records them (the format as ``manifest_format``)."""
    options = manifest_options(args)
    return {"manifest_format": options.pop("format") or "auto", **options}


def report_manifest(report: Any, bad_rows_dir: str | None) -> dict[str, Any]:
    """Write the rows a :class:`~cpd.data.manifests.ManifestReport` skipped to
    ``bad_rows_dir/bad_rows.jsonl`` (when given: ``--bad-rows skip``), tell stderr what was left
    out, and return the counts for results.json."""
    if bad_rows_dir is not None:
        path = report.write_bad_rows(Path(bad_rows_dir) / "bad_rows.jsonl")
        if report.bad_rows:
            print(f"{report.num_bad_rows} bad manifest rows were skipped: see {path}",
                  file=sys.stderr)  # fmt: skip
    if report.not_written:
        print(f"{report.num_not_written} manifest rows have a status other than 'success' (no "
              "video was written) and were left out", file=sys.stderr)  # fmt: skip
    return {"num_bad_rows": report.num_bad_rows, "num_not_written": report.num_not_written,
            "not_written": dict(report.not_written)}  # fmt: skip


def group_by_video(records: list[Any]) -> tuple[list[Any], list[int]]:
    """Distinct videos (first appearance order) as ActionRecords, and each caption's video."""
    from cpd.data import ActionRecord

    position: dict[str, int] = {}
    videos: list[Any] = []
    text_to_video = []
    for r in records:
        if r.path not in position:
            position[r.path] = len(videos)
            videos.append(ActionRecord(len(videos), r.video_id, r.path, 0, "", r.split))
        text_to_video.append(position[r.path])
    return videos, text_to_video


def format_results(m: dict) -> str:
    """Recall@k with chance, median and mean rank, in both directions."""
    lines = [f"{'direction':<14}{'queries':>8}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'MdR':>8}{'MnR':>9}"]
    lines.append("-" * len(lines[0]))
    for d, name in (("t2v", "text->video"), ("v2t", "video->text")):
        lines.append(f"{name:<14}{m[d + '_num_queries']:>8}{pct(m[d + '_r1']):>8}{pct(m[d + '_r5']):>8}"
                     f"{pct(m[d + '_r10']):>8}{m[d + '_median_rank']:>8.1f}{m[d + '_mean_rank']:>9.2f}")  # fmt: skip
        lines.append(f"{'  chance':<22}{pct(m[d + '_chance_r1']):>8}{pct(m[d + '_chance_r5']):>8}"
                     f"{pct(m[d + '_chance_r10']):>8}")  # fmt: skip
    lines.append(f"{m['num_videos']} videos, {m['num_texts']} captions (recalls in %)")
    return "\n".join(lines)


def _run_shards(args: argparse.Namespace) -> int:
    """Retrieval among the samples of shards: caption ``i`` belongs to video ``i``."""
    from cpd.commands._evaluation import view_protocol
    from cpd.commands._shards import embed_shard_samples
    from cpd.errors import DataError
    from cpd.eval.common import results_header, write_results
    from cpd.eval.retrieval import retrieval_metrics

    env, sources, got = embed_shard_samples(args, cpd_only=True)
    if not env.main:
        return 0
    if not len(got.rows):
        raise DataError(f"{args.shards}: no sample could be read and decoded")
    metrics = retrieval_metrics(got.videos, got.texts, chunk_size=args.chunk_size)
    results = results_header("retrieval", args.checkpoint, env)
    results["protocol"] = {"shards": args.shards, **view_protocol(args, sources),
                           "chunk_size": args.chunk_size}  # fmt: skip
    results.update(seeds=None, metrics=metrics, num_failed=len(got.missing),
                   failed=[{"row": r} for r in got.missing])  # fmt: skip
    write_results(args.out, results)
    print(format_results(metrics))
    if got.missing:
        print(f"{len(got.missing)} of {got.total} samples could not be read or decoded and were "
              "left out (the log names them)", file=sys.stderr)  # fmt: skip
    return 0


def _run(args: argparse.Namespace) -> int:
    import torch

    from cpd.commands._evaluation import (
        per_process_batch,
        resolve_view_arguments,
        view_options,
        view_protocol,
    )
    from cpd.data import read_caption_manifest
    from cpd.data.manifests import ManifestReport
    from cpd.errors import DataError
    from cpd.eval.common import close_distributed, init_distributed, results_header, write_results
    from cpd.eval.embed import embed_texts
    from cpd.eval.multiview import collect_video_outputs, multiview_dataset
    from cpd.eval.retrieval import retrieval_metrics
    from cpd.eval.zeroshot import video_embedding_fn
    from cpd.models import load_cpd_model

    root = args.video_root or Path(args.manifest).parent
    split = None if args.split == "all" else args.split
    report = ManifestReport()
    records = read_caption_manifest(args.manifest, root, split, **manifest_options(args),
                                    report=report)  # fmt: skip
    if not records:
        raise DataError(f"{args.manifest}: no captions in split {args.split!r}")
    videos, text_to_video = group_by_video(records)
    env = init_distributed(args.device, args.quiet)
    try:
        model = load_cpd_model(args.checkpoint, env.device)
        sources = resolve_view_arguments(args, model)
        with torch.inference_mode():
            dataset = multiview_dataset(videos, **view_options(args))
            out = collect_video_outputs(dataset, video_embedding_fn(model), env,
                                        dim=model.embed_dim,
                                        batch_size=per_process_batch(args.batch_size,
                                                                     env.world_size),
                                        workers=args.workers, desc="videos")  # fmt: skip
            text_emb = embed_texts(model, [r.caption for r in records], env)
    finally:
        close_distributed(env)
    if not env.main:
        return 0
    # leave failed videos out of the gallery, with their captions
    ok = out.ok
    new_id = torch.cumsum(ok.long(), 0) - 1
    t2v = torch.tensor(text_to_video)
    keep_text = ok[t2v]
    if not bool(keep_text.any()):
        raise DataError("no video could be decoded")
    metrics = retrieval_metrics(out.values[ok], text_emb[keep_text],
                                text_to_video=new_id[t2v[keep_text]],
                                chunk_size=args.chunk_size)  # fmt: skip
    results = results_header("retrieval", args.checkpoint, env)
    results["protocol"] = {"manifest": args.manifest, "split": args.split,
                           **view_protocol(args, sources), "chunk_size": args.chunk_size}  # fmt: skip
    results["protocol"]["root"] = str(root)
    results["protocol"].update(manifest_protocol(args))
    results.update(report_manifest(report, args.out if args.bad_rows == "skip" else None))
    results["seeds"] = None
    results["metrics"] = metrics
    results["num_failed"] = len(out.failed)
    results["failed"] = [{"path": p, "reason": r} for p, r in out.failed.values()]
    write_results(args.out, results)
    print(format_results(metrics))
    if out.failed:
        print(f"{len(out.failed)} videos failed to decode and were left out", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """Evaluate; exit status 2 for bad input."""
    if bool(args.manifest) == bool(args.shards):
        print("cpd retrieval: error: give exactly one of --manifest and --shards", file=sys.stderr)
        return 2
    return run_command("retrieval", _run_shards if args.shards else _run, args)
