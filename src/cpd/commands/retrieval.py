"""Text-to-video and video-to-text retrieval on a captioned set: R@1/5/10, median / mean rank.

Captions come from a manifest (--captions: .jsonl / .csv / Instagram .json, as cpd pretrain
reads them) filtered to --split (default val); several captions of one video (same path) are
grouped: text->video asks for the caption's video, video->text for the best-ranked of the
video's captions. Video embeddings are the renormalised mean over --num-clips x --num-crops
views (default one centre clip, as pretraining validates); similarities are computed
--chunk-size query rows at a time. Chance levels are printed beside the recalls. Videos that
fail to decode are left out with their captions, and counted.

CHECKPOINT must be a CPD model with its text tower. Writes results.json to --out.

Example:
  cpd retrieval runs/synth/export --captions data/synth/captions.jsonl --root data/synth
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cpd.eval.common import add_common_arguments, add_view_arguments, pct, run_command

HELP = "text<->video retrieval (R@1/5/10, median / mean rank) on a captioned set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cpd retrieval``."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="CPD model with text tower")
    g = parser.add_argument_group("captions")
    g.add_argument("--captions", required=True, help="caption manifest (.jsonl, .csv, .json)")
    g.add_argument("--root", help="video root (default: the manifest's folder)")
    g.add_argument("--split", default="val", help="manifest split to use; 'all' for every pair")
    g.add_argument("--chunk-size", type=int, default=4096, help="query rows per similarity block")
    add_view_arguments(parser, clips=1, crops=1, frames=8)
    add_common_arguments(parser)


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


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from cpd.commands.zeroshot import load_cpd_model
    from cpd.data import read_caption_manifest
    from cpd.errors import DataError
    from cpd.eval.common import close_distributed, init_distributed, results_header, write_results
    from cpd.eval.embed import embed_texts
    from cpd.eval.multiview import collect_video_outputs, multiview_dataset
    from cpd.eval.retrieval import retrieval_metrics
    from cpd.eval.zeroshot import video_embedding_fn

    root = args.root or Path(args.captions).parent
    split = None if args.split == "all" else args.split
    records = read_caption_manifest(args.captions, root, split)
    if not records:
        raise DataError(f"{args.captions}: no captions in split {args.split!r}")
    videos, text_to_video = group_by_video(records)
    env = init_distributed(args.device, args.quiet)
    try:
        model = load_cpd_model(args.checkpoint, env.device)
        with torch.inference_mode():
            dataset = multiview_dataset(videos, num_clips=args.num_clips, num_crops=args.num_crops,
                                        num_frames=args.num_frames, stride=args.stride,
                                        crop_size=args.crop_size)  # fmt: skip
            out = collect_video_outputs(dataset, video_embedding_fn(model), env,
                                        dim=model.embed_dim, batch_size=args.batch_size,
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
    results["protocol"] = {k: getattr(args, k) for k in ("captions", "split", "num_clips",
                           "num_crops", "num_frames", "stride", "crop_size", "chunk_size")}  # fmt: skip
    results["protocol"]["root"] = str(root)
    results["seeds"] = None
    results["metrics"] = metrics
    results["num_failed"] = len(out.failed)
    results["failed"] = [{"path": p, "reason": r} for p, r in out.failed.values()]
    if args.out:
        write_results(args.out, results)
    print(format_results(metrics))
    if out.failed:
        print(f"{len(out.failed)} videos failed to decode and were left out", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """Evaluate; exit status 2 for bad input."""
    return run_command("retrieval", _run, args)
