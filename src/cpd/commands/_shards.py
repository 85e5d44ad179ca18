"""What ``cpd embed --shards`` and ``cpd retrieval --shards`` share: embed every sample of the
shards under this process's share of the job, with the view settings resolved from the flags
and the checkpoint."""

from __future__ import annotations

import argparse
from typing import Any


def embed_shard_samples(args: argparse.Namespace, *, cpd_only: bool) -> tuple[Any, Any, Any]:
    """``(env, view sources, ShardEmbeddings)`` for ``args.shards``. ``cpd_only``: the
    checkpoint must be a CPD model (captions embedded too); otherwise a classifier gives its
    video features and no caption embeddings. Collective under torchrun: every rank calls it."""
    from cpd.eval.common import (
        close_distributed,
        init_distributed,
        resolve_view_arguments,
        view_options,
    )
    from cpd.eval.embed import video_feature_fn
    from cpd.eval.shards import embed_shards
    from cpd.models import CPDModel, load_cpd_model, load_model

    env = init_distributed(args.device, args.quiet)
    try:
        model = (load_cpd_model if cpd_only else load_model)(args.checkpoint, env.device)
        sources = resolve_view_arguments(args, model)
        fn, dim = video_feature_fn(model)
        got = embed_shards(model, args.shards, env, video_fn=fn, dim=dim, **view_options(args),
                           batch_size=args.batch_size, workers=args.workers,
                           index_dirs=[args.out] if args.out else [],
                           caption_key=args.caption_key,
                           texts=isinstance(model, CPDModel))  # fmt: skip
    finally:
        close_distributed(env)
    return env, sources, got
