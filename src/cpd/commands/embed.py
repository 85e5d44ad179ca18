"""Write video or text embeddings, with their ids, for use outside cpd.

--videos takes paths, glob patterns ("data/**/*.mp4", quoted) and list files (.txt, one path
per line). A CPD model gives unit video embeddings (the renormalised mean over --num-clips x
--num-crops views, default one centre clip); a classifier gives its pooled backbone features.
Videos that fail to decode are skipped and listed in results.json. --num-frames, --stride,
--crop-size, --fps, --mean and --std default to the checkpoint's preprocessing (an export's
config.json, a training checkpoint's run config), else 8 frames, stride 4, crop 112, 30 fps,
mean 0.45 / std 0.225; flags given win.

--caption-file takes a .txt file (one caption per line; ids = line numbers), --manifest a
video-caption manifest (its captions; ids = video ids); both need a CPD model. A manifest is read as cpd pretrain and cpd retrieval
read it: --manifest-format (default auto; --format is the output format here), --video-key,
--caption-key, --id-key, and --bad-rows skip (bad rows left out, written to OUT/bad_rows.jsonl).

--format npy writes OUT/<videos|texts>.npy (float32 [N, D]); --format safetensors writes
<name>.safetensors (tensor "embeddings"; the metadata holds count, dim, model and ids_file).
Beside either, <name>_ids.jsonl holds the ids, one JSON string per line, line i for row i;
cpd.eval.embed.read_embeddings(path) gives (array, ids) back. --shards embeds every sample of
webdataset shards (ids = the samples' keys, which must be unique): videos.npy and, for a CPD
model, texts.npy (the captions), row for row.

The output is checked before any video is decoded (the folder writable with room for every
row, the ids of videos and caption files unique) and written as the pass goes, a batch at a
time, so memory does not grow with the number of videos; a killed run leaves <file>.partial,
never a file that looks complete. Under torchrun every process embeds a share and each batch
is gathered to rank 0, which writes it at its rows: the files are the single-process files, in
input order.

Example:
  cpd embed runs/synth/export --videos "data/synth/videos/*/*.mp4" -o emb/
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
    add_option,
    add_run_options,
    manifest_options,
)
from cpd.commands.retrieval import manifest_protocol, report_manifest

HELP = "write video or text embeddings with their ids (.npy or safetensors)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cpd embed``."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="CPD model or classifier")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--videos", nargs="+", metavar="VIDEO|GLOB|LIST", help="videos to embed")
    add_option(what, "manifest", metavar="FILE",
               help="the captions of a video-caption manifest (ids = video ids)")  # fmt: skip
    what.add_argument("--caption-file", metavar="FILE",
                      help="captions to embed, one per line (.txt; ids = line numbers)")  # fmt: skip
    what.add_argument("--shards", metavar="SHARDS",
                      help="webdataset shards: their videos and (CPD model) captions")  # fmt: skip
    add_deprecated(what, "--captions", "--manifest or --caption-file", "captions_legacy")
    parser.add_argument("--format", default="npy", choices=("npy", "safetensors"),
                        help="output format (default npy)")  # fmt: skip
    g = parser.add_argument_group("caption manifest")
    add_manifest_options(g, manifest=False)
    add_deprecated(g, "--root", "--video-root", "video_root")
    add_view_options(parser, clips=1, crops=1, frames=8)
    add_run_options(parser, out="runs/embed", batch_size=4)


def _captions_input(args: argparse.Namespace) -> None:
    """``args.captions`` (a manifest or a .txt file) and ``args.root`` from the options."""
    legacy = getattr(args, "captions_legacy", None)
    if legacy is not None:  # the old --captions took both kinds, told apart by the suffix
        if Path(legacy).suffix.lower() == ".txt":
            args.caption_file = legacy
        else:
            args.manifest = legacy
    args.captions = args.manifest or args.caption_file
    args.root = args.video_root


def _run_shards(args: argparse.Namespace) -> int:
    """Videos (and captions, for a CPD model) of every sample of the shards, ids = keys."""
    from cpd.commands._evaluation import view_protocol
    from cpd.commands._shards import run_on_shards
    from cpd.eval.common import results_header, write_results
    from cpd.eval.shards import describe_row

    def write(env: Any, index: Any, chunks: Any, dims: dict[str, int]) -> Any:
        return _write_pass(args, env, chunks, dims, capacity=index.total, unique=True,
                           where=lambda row: describe_row(index, row),
                           nothing=f"{args.shards}: no sample could be read and decoded")  # fmt: skip

    env, sources, (written, _) = run_on_shards(args, cpd_only=False, body=write)
    if not env.main:
        return 0
    videos = written["videos"]
    files = [f for got in written.values() for f in got.files]
    results = results_header("embed", args.checkpoint, env)
    results["protocol"] = {"shards": args.shards, "format": args.format,
                           **view_protocol(args, sources)}  # fmt: skip
    results.update(kind="shards", num=videos.count, dim=videos.dim, files=[str(f) for f in files],
                   num_failed=len(videos.missing), failed=[{"row": r} for r in videos.missing],
                   seeds=None)  # fmt: skip
    write_results(args.out, results)
    print(f"{videos.count} samples x {videos.dim} -> {', '.join(str(f) for f in files)}")
    if videos.missing:
        print(f"{len(videos.missing)} samples could not be read or decoded and were skipped",
              file=sys.stderr)  # fmt: skip
    return 0


def _write_pass(
    args: argparse.Namespace,
    env: Any,
    chunks: Any,
    dims: dict[str, int],
    *,
    capacity: int,
    ids: list[str] | None = None,
    unique: bool,
    where: Any = None,
    nothing: str,
) -> tuple[Any, dict[int, tuple[str, str]]]:
    """Stream the pass's ``chunks`` into ``OUT/<name>.<format>`` and ``<name>_ids.jsonl`` for
    every output of ``dims``; returns ``({name: WrittenEmbeddings}, failed rows)`` on rank 0,
    ``(None, {})`` on the others. The writers, and so every check of the output, exist before
    the first video is decoded; ``ids`` (when known before the pass) must be unique if
    ``unique``, else the ids that come with the chunks are checked (on one output: they are
    the same for all)."""
    from contextlib import ExitStack

    from cpd.errors import DataError
    from cpd.eval.embed import EmbeddingWriter, open_on_main, stream_embeddings

    metadata = {"model": str(Path(args.checkpoint).resolve())}

    def open_writers() -> dict[str, EmbeddingWriter]:
        writers: dict[str, EmbeddingWriter] = {}
        try:
            for name, dim in dims.items():
                check = unique and (name == "videos" or len(dims) == 1)
                writers[name] = EmbeddingWriter(args.out, name, dim=dim, capacity=capacity,
                                                fmt=args.format, ids=ids, unique_ids=check,
                                                metadata=metadata, where=where)  # fmt: skip
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        return writers

    writers = open_on_main(env, open_writers)
    with ExitStack() as stack:  # an error leaves no partial file behind
        for writer in (writers or {}).values():
            stack.enter_context(writer)
        failed = stream_embeddings(chunks, env, writers, dims)
        if writers is None:
            return None, {}
        if not any(writer.count for writer in writers.values()):
            raise DataError(nothing)
        return {name: writer.close() for name, writer in writers.items()}, failed


def _run(args: argparse.Namespace) -> int:
    import torch

    from cpd.commands._evaluation import (
        per_process_batch,
        resolve_view_arguments,
        view_options,
        view_protocol,
    )
    from cpd.data import ActionRecord
    from cpd.eval.common import close_distributed, init_distributed, results_header, write_results
    from cpd.eval.embed import (
        expand_video_inputs,
        read_caption_inputs,
        text_chunks,
        video_chunks,
        video_feature_fn,
    )
    from cpd.eval.multiview import multiview_dataset
    from cpd.models import load_cpd_model, load_model

    manifest: dict = {}
    if args.manifest:
        texts, ids, report = _read_manifest(args)
        skip_dir = args.out if args.bad_rows == "skip" else None
        manifest = {"protocol": manifest_protocol(args), "report": report, "dir": skip_dir}
    elif args.caption_file:
        texts, ids = read_caption_inputs(args.captions, args.root)
    else:
        paths = ids = expand_video_inputs(args.videos)
    env = init_distributed(args.device, args.quiet)
    try:
        with torch.inference_mode():
            if args.captions:
                model = load_cpd_model(args.checkpoint, env.device)
                sources = resolve_view_arguments(args, model)
                name, dim = "texts", model.embed_dim
                chunks = text_chunks(model, texts, env, batch_size=256)
            else:
                model = load_model(args.checkpoint, env.device)
                sources = resolve_view_arguments(args, model)
                fn, dim = video_feature_fn(model)
                records = [ActionRecord(i, p, p, 0, "", None) for i, p in enumerate(paths)]
                dataset = multiview_dataset(records, **view_options(args))
                name = "videos"
                chunks = video_chunks(dataset, fn, env, dim=dim,
                                      batch_size=per_process_batch(args.batch_size,
                                                                   env.world_size),
                                      workers=args.workers)  # fmt: skip
            # a manifest's ids are the videos of its captions: several captions, one id
            written, failures = _write_pass(args, env, chunks, {name: dim}, capacity=len(ids),
                                            ids=ids, unique=not manifest,
                                            nothing="no video could be decoded")  # fmt: skip
    finally:
        close_distributed(env)
    if not env.main:
        return 0
    got = written[name]
    if got.missing != sorted(failures):
        raise RuntimeError(f"rows {sorted(set(got.missing) - set(failures))[:10]} never came")
    failed = [{"path": p, "reason": r} for _, (p, r) in sorted(failures.items())]
    results = results_header("embed", args.checkpoint, env)
    results["protocol"] = {"format": args.format, **view_protocol(args, sources)}
    results.update(kind=name, num=got.count, dim=dim, files=[str(f) for f in got.files],
                   num_failed=len(failed), failed=failed, seeds=None)  # fmt: skip
    if manifest:
        results["protocol"].update(manifest["protocol"])
        results.update(report_manifest(manifest["report"], manifest["dir"]))
    write_results(args.out, results)
    print(f"{got.count} {name} x {dim} -> {', '.join(str(f) for f in got.files)}")
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
    _captions_input(args)
    return run_command("embed", _run_shards if args.shards else _run, args)
