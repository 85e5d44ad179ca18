"""Embeddings of many videos or captions, exact under several processes, and their files.

Videos: a CPD model gives the renormalised mean of its views' unit embeddings; a classifier
(``ResNet3d``) gives the mean of its views' pooled backbone features (``forward_features``,
before dropout and ``fc``). Texts: ``CPDModel.encode_text`` in batches, each rank embedding
every ``world_size``-th caption, gathered by index.

Files (``write_embeddings``): ``npy`` writes ``<name>.npy`` (float32 ``[N, D]``) and
``<name>_ids.json`` (the N ids in row order); ``safetensors`` writes ``<name>.safetensors``
with the tensor ``"embeddings"`` and the ids as JSON in the metadata key ``"ids"``.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cpd.errors import DataError

__all__ = [
    "embed_texts",
    "expand_video_inputs",
    "read_caption_inputs",
    "video_feature_fn",
    "write_embeddings",
]

_LIST_SUFFIXES = (".txt", ".lst")


def expand_video_inputs(items: Sequence[str]) -> list[str]:
    """Video paths from ``items``: paths, glob patterns (``"videos/**/*.mp4"``), or list files
    (``.txt`` / ``.lst``, one path per line, relative paths taken from the list's folder).

    Order is kept (a glob's matches sorted); a path given twice is kept once. A pattern that
    matches nothing or a missing path or list file is a :class:`DataError`.
    """
    out: dict[str, None] = {}
    for item in items:
        if any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise DataError(f"{item}: the pattern matches no file")
            out.update(dict.fromkeys(matches))
        elif Path(item).suffix.lower() in _LIST_SUFFIXES:
            base = Path(item).parent
            try:
                lines = Path(item).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise DataError(f"{item}: cannot read the video list: {exc}") from exc
            for line in lines:
                if line.strip():
                    path = Path(line.strip())
                    out[str(path if path.is_absolute() else base / path)] = None
        else:
            if not Path(item).exists():
                raise DataError(f"{item}: no such video")
            out[item] = None
    if not out:
        raise DataError("no videos given")
    return list(out)


def read_caption_inputs(
    path: str | Path, root: str | Path | None = None
) -> tuple[list[str], list[str]]:
    """``(texts, ids)`` of a caption file: a ``.txt`` file (one caption per line; ids are the
    1-based line numbers) or a caption manifest (``.jsonl`` / ``.csv`` / ``.json``; ids are
    the video ids, repeated for several captions of one video)."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DataError(f"{path}: cannot read captions: {exc}") from exc
        pairs = [(line.strip(), str(n)) for n, line in enumerate(lines, 1) if line.strip()]
        if not pairs:
            raise DataError(f"{path}: no captions")
        return [t for t, _ in pairs], [i for _, i in pairs]
    from cpd.data import read_caption_manifest

    records = read_caption_manifest(path, root if root is not None else path.parent)
    if not records:
        raise DataError(f"{path}: no captions")
    return [r.caption for r in records], [r.video_id for r in records]


def video_feature_fn(model: torch.nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """``(fn, dim)``: ``fn(views [V, 3, T, S, S]) -> [dim]`` for a CPD model or a classifier."""
    from cpd.eval.zeroshot import video_embedding_fn
    from cpd.models import CPDModel

    if isinstance(model, CPDModel):
        return video_embedding_fn(model), model.embed_dim

    def features(views: torch.Tensor) -> torch.Tensor:
        return model.forward_features(views).double().mean(dim=0)

    return features, int(model.num_features)


@torch.no_grad()
def embed_texts(
    model: Any, texts: Sequence[str], env: Any, *, batch_size: int = 256
) -> torch.Tensor:
    """``[N, D]`` float64 unit text embeddings of ``texts``, in order, on every rank.

    Rank ``r`` embeds texts ``r, r + W, ...`` in batches; rows are gathered by index.
    """
    from cpd.eval.common import progress
    from cpd.eval.gather import gather_embeddings

    mine = list(range(env.rank, len(texts), env.world_size))
    starts = range(0, len(mine), batch_size)
    parts = []
    for start in progress(starts, total=len(starts), desc="texts", enabled=env.show_progress):
        chunk = mine[start : start + batch_size]
        parts.append(F.normalize(model.encode_text([texts[i] for i in chunk]).double(), dim=1))
    dim = model.embed_dim
    device = env.device if env.world_size > 1 and env.device.type == "cuda" else "cpu"
    local = torch.cat(parts).to(device) if parts else torch.zeros(0, dim, dtype=torch.float64)
    index = torch.tensor(mine, dtype=torch.int64, device=device)
    emb, _ = gather_embeddings(local.to(device), index, num_samples=len(texts))
    return emb.cpu()


def write_embeddings(
    out: str | Path, name: str, emb: torch.Tensor, ids: Sequence[str], fmt: str = "npy"
) -> list[Path]:
    """Write ``emb [N, D]`` (as float32) with its ``ids``; returns the files written."""
    if emb.shape[0] != len(ids):
        raise ValueError(f"{emb.shape[0]} embeddings but {len(ids)} ids")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = emb.detach().float().cpu().contiguous()
    if fmt == "npy":
        import numpy as np

        np.save(out / f"{name}.npy", data.numpy())
        (out / f"{name}_ids.json").write_text(json.dumps(list(ids)) + "\n", encoding="utf-8")
        return [out / f"{name}.npy", out / f"{name}_ids.json"]
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({"embeddings": data}, str(out / f"{name}.safetensors"),
                  metadata={"ids": json.dumps(list(ids))})  # fmt: skip
        return [out / f"{name}.safetensors"]
    raise ValueError(f"format must be 'npy' or 'safetensors', got {fmt!r}")
