"""Write video or text embeddings, with their ids, for use outside cpd.

--videos takes paths, glob patterns ("data/**/*.mp4", quoted) and list files (.txt, one path
per line). A CPD model gives unit video embeddings (the renormalised mean over --num-clips x
--num-crops views, default one centre clip); a classifier gives its pooled backbone features.
Videos that fail to decode are skipped and listed in results.json.

--captions takes a .txt file (one caption per line; ids = line numbers) or a caption manifest
(.jsonl / .csv / .json; ids = video ids) and needs a CPD model.

--format npy writes OUT/<videos|texts>.npy (float32 [N, D]) and <name>_ids.json;
--format safetensors writes <name>.safetensors (tensor "embeddings", ids in the metadata).
Under torchrun every process embeds a share and rank 0 writes the whole, in input order.

Example:
  cpd embed runs/synth/export --videos "data/synth/videos/*/*.mp4" --out emb/
"""

from __future__ import annotations

import argparse
import sys

from cpd.eval.common import add_common_arguments, add_view_arguments, run_command

HELP = "write video or text embeddings with their ids (.npy or safetensors)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cpd embed``."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="CPD model or classifier")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--videos", nargs="+", metavar="VIDEO|GLOB|LIST", help="videos to embed")
    what.add_argument("--captions", metavar="FILE", help="captions to embed (.txt or manifest)")
    parser.add_argument("--root", help="video root of a caption manifest (default: its folder)")
    parser.add_argument("--format", default="npy", choices=("npy", "safetensors"),
                        help="output format (default npy)")  # fmt: skip
    add_view_arguments(parser, clips=1, crops=1, frames=8)
    add_common_arguments(parser)
    parser.set_defaults(out="embeddings")


def _run(args: argparse.Namespace) -> int:
    import torch

    from cpd.commands.zeroshot import load_cpd_model
    from cpd.data import ActionRecord
    from cpd.errors import DataError
    from cpd.eval.common import close_distributed, init_distributed, results_header, write_results
    from cpd.eval.embed import (
        embed_texts,
        expand_video_inputs,
        read_caption_inputs,
        video_feature_fn,
        write_embeddings,
    )
    from cpd.eval.multiview import collect_video_outputs, multiview_dataset
    from cpd.models import load_model

    if args.captions:
        texts, ids = read_caption_inputs(args.captions, args.root)
    else:
        paths = expand_video_inputs(args.videos)
    env = init_distributed(args.device, args.quiet)
    failed: list = []
    try:
        with torch.inference_mode():
            if args.captions:
                model = load_cpd_model(args.checkpoint, env.device)
                emb, name = embed_texts(model, texts, env, batch_size=256), "texts"
            else:
                model = load_model(args.checkpoint, env.device)
                fn, dim = video_feature_fn(model)
                records = [ActionRecord(i, p, p, 0, "", None) for i, p in enumerate(paths)]
                dataset = multiview_dataset(records, num_clips=args.num_clips,
                                            num_crops=args.num_crops, num_frames=args.num_frames,
                                            stride=args.stride, crop_size=args.crop_size)  # fmt: skip
                out = collect_video_outputs(dataset, fn, env, dim=dim, batch_size=args.batch_size,
                                            workers=args.workers, desc="videos")  # fmt: skip
                ok = out.ok
                emb, name = out.values[ok], "videos"
                ids = [p for p, keep in zip(paths, ok.tolist(), strict=True) if keep]
                failed = [{"path": p, "reason": r} for p, r in out.failed.values()]
    finally:
        close_distributed(env)
    if not env.main:
        return 0
    if not len(ids):
        raise DataError("no video could be decoded")
    files = write_embeddings(args.out, name, emb, ids, args.format)
    results = results_header("embed", args.checkpoint, env)
    results["protocol"] = {k: getattr(args, k) for k in ("format", "num_clips", "num_crops",
                           "num_frames", "stride", "crop_size")}  # fmt: skip
    results.update(kind=name, num=len(ids), dim=int(emb.shape[1]), files=[str(f) for f in files],
                   num_failed=len(failed), failed=failed, seeds=None)  # fmt: skip
    write_results(args.out, results)
    print(f"{len(ids)} {name} x {emb.shape[1]} -> {', '.join(str(f) for f in files)}")
    if failed:
        print(f"{len(failed)} videos failed to decode and were skipped", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """Embed; exit status 2 for bad input."""
    return run_command("embed", _run, args)
