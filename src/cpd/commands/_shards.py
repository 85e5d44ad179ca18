"""What ``cpd embed --shards`` and ``cpd retrieval --shards`` share: embed every sample of the
shards under this process's share of the job, with the view settings resolved from the flags
and the checkpoint; retrieval gathers every row, embed writes the batches as they come."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def embed_shard_samples(args: argparse.Namespace, *, cpd_only: bool) -> tuple[Any, Any, Any]:
    """``(env, view sources, ShardEmbeddings)`` for ``args.shards``, every row on every rank.
    ``cpd_only``: the checkpoint must be a CPD model (captions embedded too); otherwise a
    classifier gives its video features and no caption embeddings. Collective under torchrun:
    every rank calls it."""
    from cpd.eval.shards import gather_shard_chunks

    def gather(env: Any, index: Any, chunks: Any, dims: dict[str, int]) -> Any:
        return gather_shard_chunks(chunks, index, env, dim=dims["videos"], texts="texts" in dims)

    return run_on_shards(args, cpd_only=cpd_only, body=gather)


def run_on_shards(
    args: argparse.Namespace, *, cpd_only: bool, body: Callable[[Any, Any, Any, dict[str, int]], T]
) -> tuple[Any, Any, T]:
    """``(env, view sources, body(env, shard index, chunks, dims))``: in the process group, with
    the model loaded, ``chunks`` this rank's :func:`cpd.eval.shards.shard_chunks` (made as
    ``body`` iterates) and ``dims`` their outputs' sizes (``videos``, and ``texts`` for a CPD
    model). Collective under torchrun: every rank calls it."""
    from cpd.commands._evaluation import per_process_batch, resolve_view_arguments, view_options
    from cpd.data.shards import shared_shard_index
    from cpd.eval.common import close_distributed, init_distributed
    from cpd.eval.embed import video_feature_fn
    from cpd.eval.shards import shard_chunks
    from cpd.models import CPDModel, load_cpd_model, load_model

    env = init_distributed(args.device, args.quiet)
    try:
        model = (load_cpd_model if cpd_only else load_model)(args.checkpoint, env.device)
        sources = resolve_view_arguments(args, model)
        fn, dim = video_feature_fn(model)
        texts = isinstance(model, CPDModel)
        index = shared_shard_index(args.shards, [args.out] if args.out else [])
        chunks = shard_chunks(model, index, env, video_fn=fn, dim=dim, **view_options(args),
                              batch_size=per_process_batch(args.batch_size, env.world_size),
                              workers=args.workers, caption_key=args.caption_key,
                              texts=texts)  # fmt: skip
        result = body(env, index, chunks, {"videos": dim, **({"texts": dim} if texts else {})})
    finally:
        close_distributed(env)
    return env, sources, result
