"""Write video or text embeddings, with their ids, for use outside cpd.

--videos takes paths, glob patterns ("data/**/*.mp4", quoted) and list files (.txt, one path
per line). A CPD model gives unit video embeddings (the renormalised mean over --num-clips x
--num-crops views, default one centre clip); a classifier gives its pooled backbone features.
Videos that fail to decode are skipped and listed in results.json. --num-frames, --stride,
--crop-size, --fps, --mean and --std default to the checkpoint's preprocessing (an export's
config.json, a training checkpoint's run config), else 8 frames, stride 4, crop 112, 30 fps,
mean 0.45 / std 0.225; flags given win.

--captions takes a .txt file (one caption per line; ids = line numbers) or a caption manifest
(ids = video ids) and needs a CPD model. A manifest is read as cpd pretrain and cpd retrieval
read it: --manifest-format (default auto; --format is the output format here), --video-key,
--caption-key, --id-key, and --bad-rows skip (bad rows left out, written to OUT/bad_rows.jsonl).

--format npy writes OUT/<videos|texts>.npy (float32 [N, D]) and <name>_ids.json;
--format safetensors writes <name>.safetensors (tensor "embeddings", ids in the metadata).
--shards embeds every sample of webdataset shards (ids = the samples' keys): videos.npy and, for
a CPD model, texts.npy (the captions), row for row.

Under torchrun every process embeds a share and rank 0 writes the whole, in input order.

Example:
  cpd embed runs/synth/export --videos "data/synth/videos/*/*.mp4" --out emb/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cpd.commands.retrieval import (
    add_manifest_arguments,
    manifest_options,
    manifest_protocol,
    report_manifest,
)
from cpd.eval.common import add_common_arguments, add_view_arguments, run_command

HELP = "write video or text embeddings with their ids (.npy or safetensors)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cpd embed``."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="CPD model or classifier")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--videos", nargs="+", metavar="VIDEO|GLOB|LIST", help="videos to embed")
    what.add_argument("--captions", metavar="FILE", help="captions to embed (.txt or manifest)")
    what.add_argument("--shards", metavar="SHARDS",
                      help="webdataset shards: their videos and (CPD model) captions")  # fmt: skip
    parser.add_argument("--root", help="video root of a caption manifest (default: its folder)")
    parser.add_argument("--format", default="npy", choices=("npy", "safetensors"),
                        help="output format (default npy)")  # fmt: skip
    add_manifest_arguments(parser.add_argument_group("caption manifest"),
                           format_flags=("--manifest-format",))  # fmt: skip
    add_view_arguments(parser, clips=1, crops=1, frames=8)
    add_common_arguments(parser)
    parser.set_defaults(out="embeddings")


def _run_shards(args: argparse.Namespace) -> int:
    """Videos (and captions, for a CPD model) of every sample of the shards, ids = keys."""
    from cpd.commands._shards import embed_shard_samples
    from cpd.errors import DataError
    from cpd.eval.common import results_header, view_protocol, write_results
    from cpd.eval.embed import write_embeddings

    env, sources, got = embed_shard_samples(args, cpd_only=False)
    if not env.main:
        return 0
    if not got.keys:
        raise DataError(f"{args.shards}: no sample could be read and decoded")
    files = write_embeddings(args.out, "videos", got.videos.float(), got.keys, args.format)
    if got.texts is not None:
        files += write_embeddings(args.out, "texts", got.texts.float(), got.keys, args.format)
    results = results_header("embed", args.checkpoint, env)
    results["protocol"] = {"shards": args.shards, "format": args.format,
                           **view_protocol(args, sources)}  # fmt: skip
    results.update(kind="shards", num=len(got.keys), dim=int(got.videos.shape[1]),
                   files=[str(f) for f in files], num_failed=len(got.missing),
                   failed=[{"row": r} for r in got.missing], seeds=None)  # fmt: skip
    write_results(args.out, results)
    print(f"{len(got.keys)} samples x {got.videos.shape[1]} -> {', '.join(str(f) for f in files)}")
    if got.missing:
        print(f"{len(got.missing)} samples could not be read or decoded and were skipped",
              file=sys.stderr)  # fmt: skip
    return 0


def _run(args: argparse.Namespace) -> int:
    import torch

    from cpd.data import ActionRecord
    from cpd.errors import DataError
    from cpd.eval.common import (
        close_distributed,
        init_distributed,
        resolve_view_arguments,
        results_header,
        view_options,
        view_protocol,
        write_results,
    )
    from cpd.eval.embed import (
        embed_texts,
        expand_video_inputs,
        read_caption_inputs,
        video_feature_fn,
        write_embeddings,
    )
    from cpd.eval.multiview import collect_video_outputs, multiview_dataset
    from cpd.models import load_cpd_model, load_model

    manifest: dict = {}
    if args.captions and Path(args.captions).suffix.lower() != ".txt":
        texts, ids, report = _read_manifest(args)
        skip_dir = args.out if args.bad_rows == "skip" else None
        manifest = {"protocol": manifest_protocol(args), "report": report, "dir": skip_dir}
    elif args.captions:
        texts, ids = read_caption_inputs(args.captions, args.root)
    else:
        paths = expand_video_inputs(args.videos)
    env = init_distributed(args.device, args.quiet)
    failed: list = []
    try:
        with torch.inference_mode():
            if args.captions:
                model = load_cpd_model(args.checkpoint, env.device)
                sources = resolve_view_arguments(args, model)
                emb, name = embed_texts(model, texts, env, batch_size=256), "texts"
            else:
                model = load_model(args.checkpoint, env.device)
                sources = resolve_view_arguments(args, model)
                fn, dim = video_feature_fn(model)
                records = [ActionRecord(i, p, p, 0, "", None) for i, p in enumerate(paths)]
                dataset = multiview_dataset(records, **view_options(args))
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
    results["protocol"] = {"format": args.format, **view_protocol(args, sources)}
    results.update(kind=name, num=len(ids), dim=int(emb.shape[1]), files=[str(f) for f in files],
                   num_failed=len(failed), failed=failed, seeds=None)  # fmt: skip
    if manifest:
        results["protocol"].update(manifest["protocol"])
        results.update(report_manifest(manifest["report"], manifest["dir"]))
    write_results(args.out, results)
    print(f"{len(ids)} {name} x {emb.shape[1]} -> {', '.join(str(f) for f in files)}")
    if failed:
        print(f"{len(failed)} videos failed to decode and were skipped", file=sys.stderr)
    return 0


def _read_manifest(args: argparse.Namespace) -> tuple[list[str], list[str], Any]:
    """``(texts, ids, report)`` of the caption manifest ``--captions`` (ids = video ids, repeated
    for several captions of one video), read with the manifest options."""
    from cpd.data import read_caption_manifest
    from cpd.data.manifests import ManifestReport
    from cpd.errors import DataError

    report = ManifestReport()
    root = args.root if args.root is not None else Path(args.captions).parent
    records = read_caption_manifest(args.captions, root, **manifest_options(args), report=report)
    if not records:
        raise DataError(f"{args.captions}: no captions")
    return [r.caption for r in records], [r.video_id for r in records], report


def run(args: argparse.Namespace) -> int:
    """Embed; exit status 2 for bad input."""
    return run_command("embed", _run_shards if args.shards else _run, args)
