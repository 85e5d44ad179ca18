"""Datasets, samplers and DataLoaders for pretraining.

Data order is a pure function of (seed, epoch): a :class:`~torch.utils.data.DistributedSampler`
(used even for one process, so both paths are the same code) shuffles with ``seed + epoch``,
and each sample's clip comes from ``(seed, epoch, index)`` inside the dataset. A run resumed in
the middle of an epoch skips the batches already done by dropping the first ``steps x batch``
indices of this rank's list (:class:`SkipSampler`), so it sees exactly the batches the
uninterrupted run would have seen next, without loading the skipped ones.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from cpd.config import ConfigError
from cpd.data import CaptionRecord, VideoCaptionDataset, collate, read_caption_manifest
from cpd.data.datasets import derive_seed
from cpd.data.shards import shared_shard_index
from cpd.data.stream import ShardDataset, shard_records
from cpd.errors import DataError
from cpd.train.config import DataConfig

__all__ = [
    "GroupedSampler",
    "PretrainData",
    "SkipSampler",
    "build_data",
    "declared_hflip",
    "make_loader",
    "resolve_hflip",
]

log = logging.getLogger(__name__)


class SkipSampler(Sampler[int]):
    """The indices of ``base`` without the first ``skip`` ones (set ``skip`` before iterating)."""

    def __init__(self, base: Sampler[int]) -> None:
        self.base = base
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)  # type: ignore[arg-type]


class GroupedSampler(Sampler[int]):
    """Shuffled whole groups, so that the pairs of a group land in the same batch.

    With ``data.group_by`` naming a manifest column (the synthetic set's ``group``: one
    appearance rendered with several motions), a batch holds whole groups, and telling its
    pairs apart needs what differs inside a group (the motion) rather than what differs between
    groups (the appearance). Group order and the order inside each group come from
    (seed, epoch). Like :class:`DistributedSampler`, each rank gets ``ceil(N / world)`` indices
    (the list wraps around to pad); rank r takes the r-th slice of every global batch of
    ``batch_size x world_size`` pairs, so the in-batch loss, which gathers all ranks, sees
    whole groups.
    """

    def __init__(self, groups: Sequence[Hashable], *, batch_size: int, rank: int,
                 world_size: int, seed: int) -> None:  # fmt: skip
        self.members: dict[Hashable, list[int]] = {}
        for index, group in enumerate(groups):
            self.members.setdefault(group, []).append(index)
        self.num = len(groups)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order :meth:`__iter__` gives."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.num // self.world_size)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 0, stream=11))
        keys = list(self.members)
        flat: list[int] = []
        for k in torch.randperm(len(keys), generator=g).tolist():
            members = self.members[keys[k]]
            flat.extend(members[i] for i in torch.randperm(len(members), generator=g).tolist())
        total = len(self) * self.world_size
        flat = (flat * (total // max(len(flat), 1) + 1))[:total]
        span = self.batch_size * self.world_size
        for start in range(0, total, span):
            chunk = flat[start : start + span]
            share = len(chunk) // self.world_size
            yield from chunk[self.rank * share : (self.rank + 1) * share]


def declared_hflip(folders: Iterable[Path]) -> float | None:
    """The flip probability a dataset declares in the ``dataset.json`` of the first folder that
    has one (``"hflip": false`` -> 0, true -> 0.5, a number as is), or None.

    The synthetic set declares false: its captions and classes name directions, which a flip
    would turn into lies.
    """
    for folder in folders:
        meta = Path(folder) / "dataset.json"
        if not meta.is_file():
            continue
        try:
            declared = json.loads(meta.read_text(encoding="utf-8")).get("hflip")
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{meta}: cannot read dataset metadata: {exc}") from exc
        if declared is not None:
            return 0.5 if declared is True else float(declared)
    return None


def resolve_hflip(hflip: float | None, folders: Iterable[Path]) -> float:
    """``hflip`` (a config's ``data.hflip``) when set, else what the first ``dataset.json``
    among ``folders`` declares (:func:`declared_hflip`), else 0.5."""
    if hflip is not None:
        return hflip
    declared = declared_hflip(folders)
    return 0.5 if declared is None else declared


@dataclass
class PretrainData:
    """The training and validation datasets (validation None when off or empty)."""

    train: VideoCaptionDataset | ShardDataset
    val: VideoCaptionDataset | ShardDataset | None
    hflip: float
    train_groups: list[Hashable] | None = None  # from data.group_by, one per training pair
    missing: list[str] = field(default_factory=list)  # manifest videos with no file, left out


def drop_missing(records: Sequence[CaptionRecord]) -> tuple[list[CaptionRecord], list[str]]:
    """The records whose video file exists, renumbered 0..N-1, and the paths that do not.

    As the official loader does, a pair without its video takes no memory-bank row: kept, it
    would be a row that is never updated and yet drawn as a negative for the whole run.
    """
    kept: list[CaptionRecord] = []
    missing: list[str] = []
    for record in records:
        if os.path.isfile(record.path):
            kept.append(dataclasses.replace(record, index=len(kept)))
        else:
            missing.append(record.path)
    return kept, missing


def _clip_loader(cfg: DataConfig, scale_range: tuple[int, int] | None) -> Any:
    """``None`` (decode each clip from its file) or an in-memory frame cache."""
    if not cfg.cache_frames:
        return None
    from cpd.data.cache import FrameCache
    from cpd.video import default_scale_range

    short = cfg.cache_short_side or (scale_range or default_scale_range(cfg.crop_size))[1]
    return FrameCache(short_side=short, max_bytes=int(cfg.cache_max_gb * 1e9))


def _shard_data(
    cfg: DataConfig, tokenizer: Any, *, seed: int, val: bool, progress: bool,
    index_dir: str | Path | None, official_tokens: bool = False,
) -> PretrainData:  # fmt: skip
    """Datasets streamed from ``data.shards`` (and ``data.val_shards``), or, with
    ``data.cache_frames``, read once into the frame cache and served like a manifest's."""
    composed = [f"data.{k}" for k in ("group_by", "video_neighbours", "caption_neighbours")
                if getattr(cfg, k, None) not in (None, 0, 1)]  # fmt: skip
    if composed:
        # batches composed by content need random access to the pairs; a stream has none, so
        # shards train on the planned order
        log.warning("%s: manifest options, not used with data.shards", ", ".join(composed))
    dirs = [index_dir] if index_dir is not None else []
    spec = cfg.shards or ""
    first = spec.split("::")[0]
    # a remote shard spec has no folder to hold a dataset.json
    hflip = resolve_hflip(cfg.hflip, [] if "://" in first else [Path(first), Path(first).parent])
    scale = tuple(cfg.scale_range) if cfg.scale_range else None
    common = dict(num_frames=cfg.num_frames, stride=cfg.stride, crop_size=cfg.crop_size,
                  seed=seed, max_tokens=cfg.max_tokens, official_tokens=official_tokens,
                  max_failure_ratio=cfg.max_failure_ratio)  # fmt: skip
    index = shared_shard_index(spec, dirs, progress=progress)
    val_index = shared_shard_index(cfg.val_shards, dirs) if val and cfg.val_shards else None
    log.info("shards: %d training pairs in %d shards", index.total, len(index.urls))
    if cfg.cache_frames:
        cache = _clip_loader(cfg, scale)  # type: ignore[arg-type]
        records, videos = shard_records(index, caption_key=getattr(cfg, "caption_key", "caption"))
        train = VideoCaptionDataset(records, tokenizer, train=True, hflip=hflip,
                                    scale_range=scale, loader=cache, **common)  # fmt: skip
        val_set = None
        if val_index is not None:
            val_records, val_videos = shard_records(
                val_index, caption_key=getattr(cfg, "caption_key", "caption")
            )
            videos += val_videos
            val_set = VideoCaptionDataset(val_records, tokenizer, train=False, hflip=0.0,
                                          loader=cache, **common)  # fmt: skip
        cache.fill(videos, workers=max(cfg.workers, 1), progress=progress)
        return PretrainData(train, val_set, hflip)
    stream = dict(
        buffer=cfg.shuffle_buffer, caption_key=getattr(cfg, "caption_key", "caption"), **common
    )
    train_stream = ShardDataset(index, tokenizer, train=True, hflip=hflip, scale_range=scale,
                                **stream)  # fmt: skip
    val_stream = None
    if val_index is not None:
        val_stream = ShardDataset(val_index, tokenizer, train=False, hflip=0.0, **stream)
    return PretrainData(train_stream, val_stream, hflip)  # type: ignore[arg-type]


def build_data(
    cfg: DataConfig, tokenizer: Any, *, seed: int, val: bool, progress: bool = True,
    index_dir: str | Path | None = None,
    bad_rows_file: str | Path | None = None,
    official_tokens: bool = False,
) -> PretrainData:  # fmt: skip
    """Read the manifest's splits (or the shards) and build the datasets (validation clips in
    test mode). ``index_dir``: where a shard index is kept when it cannot go beside the shards.
    ``bad_rows_file``: where the manifest rows left out under ``data.bad_rows=skip`` go.
    ``official_tokens``: captions cut as the official text path cuts them (``model.text_compat``;
    see :func:`cpd.data.datasets.tokenize_captions`)."""
    if cfg.shards:
        return _shard_data(cfg, tokenizer, seed=seed, val=val, progress=progress,
                           index_dir=index_dir, official_tokens=official_tokens)  # fmt: skip
    if not cfg.manifest:
        raise ConfigError("data.manifest: required (e.g. OUT/captions.jsonl from `cpd synth OUT`)")
    root = cfg.video_root if cfg.video_root is not None else str(Path(cfg.manifest).parent)
    hflip = resolve_hflip(cfg.hflip, [Path(cfg.manifest).parent])
    scale = tuple(cfg.scale_range) if cfg.scale_range else None
    loader = _clip_loader(cfg, scale)  # type: ignore[arg-type]
    common = dict(
        num_frames=cfg.num_frames,
        stride=cfg.stride,
        crop_size=cfg.crop_size,
        seed=seed,
        max_tokens=cfg.max_tokens,
        official_tokens=official_tokens,
        max_failure_ratio=cfg.max_failure_ratio,
        loader=loader,
    )
    records = read_caption_manifest(cfg.manifest, root, cfg.train_split or None, cfg.manifest_format,
                                    **cfg.manifest_options(), bad_rows_file=bad_rows_file)  # fmt: skip
    if not records:
        raise ConfigError(f"data.train_split: no {cfg.train_split!r} pairs in {cfg.manifest}")
    records, absent = drop_missing(records)
    if absent:
        log.warning("%d of %d training pairs have no video file and are left out, e.g. %s",
                    len(absent), len(records) + len(absent), absent[0])  # fmt: skip
    if not records:
        raise DataError(f"{cfg.manifest}: none of the videos of its {cfg.train_split!r} pairs "
                        f"exists under {root}, e.g. {absent[0]}")  # fmt: skip
    train = VideoCaptionDataset(
        records, tokenizer, train=True, hflip=hflip, scale_range=scale, **common
    )
    groups = None
    if cfg.group_by:
        missing = [r.video_id for r in records if cfg.group_by not in r.meta]
        if missing:
            raise ConfigError(
                f"data.group_by={cfg.group_by!r}: {cfg.manifest} has no such column for "
                f"{len(missing)} pair(s), e.g. {missing[0]!r}"
            )
        groups = [r.meta[cfg.group_by] for r in records]
    val_set = None
    if val and cfg.val_split:
        val_records = read_caption_manifest(cfg.manifest, root, cfg.val_split, cfg.manifest_format,
                                            **cfg.manifest_options())  # fmt: skip
        val_records, val_absent = drop_missing(val_records)
        absent += val_absent
        if val_records:
            val_set = VideoCaptionDataset(val_records, tokenizer, train=False, hflip=0.0, **common)
        else:
            log.warning("no %r pairs in %s: validation is off", cfg.val_split, cfg.manifest)
    if loader is not None and hasattr(loader, "fill"):
        # Fill before DataLoader workers fork, so that they share the decoded frames.
        paths = train.paths + (val_set.paths if val_set is not None else [])
        loader.fill(paths, workers=max(cfg.workers, 1), progress=progress)
    return PretrainData(train, val_set, hflip, groups, absent)


def make_loader(
    dataset: VideoCaptionDataset,
    *,
    batch_size: int,
    train: bool,
    seed: int,
    epoch: int,
    workers: int,
    rank: int,
    world_size: int,
    skip_batches: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> DataLoader:
    """The loader of one epoch for this rank.

    Training: shuffled by (seed, epoch), full batches only (the same number of steps on every
    rank, and no batch of one for BatchNorm), the first ``skip_batches`` left out. Validation:
    in order, every sample once per rank list (the sampler pads with repeats to equal lengths;
    the evaluation drops them by index). ``groups`` (training only): batches of whole groups
    (:class:`GroupedSampler`).
    """
    dataset.set_epoch(epoch)
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, 0, stream=7))
    if isinstance(dataset, ShardDataset):  # the dataset plans its own order (cpd.data.stream)
        dataset.configure(epoch=epoch, rank=rank, world_size=world_size, workers=workers,
                          batch_size=batch_size, skip_batches=skip_batches if train else 0)  # fmt: skip
        return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                          pin_memory=torch.cuda.is_available(), generator=generator,
                          persistent_workers=False)  # fmt: skip
    sampler: GroupedSampler | DistributedSampler
    if train and groups is not None:
        sampler = GroupedSampler(
            groups, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed
        )
    else:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=False
        )
    sampler.set_epoch(epoch)
    skipping = SkipSampler(sampler)
    skipping.skip = skip_batches * batch_size
    # The loader's own generator (worker base seeds) comes from (seed, epoch), not global state.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=skipping,
        num_workers=workers,
        collate_fn=collate,
        drop_last=train,
        pin_memory=torch.cuda.is_available(),
        generator=generator,
        persistent_workers=False,  # workers must see the dataset's new epoch
    )
