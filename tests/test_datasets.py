"""Datasets: sample shapes, (seed, epoch, index) determinism, and the decode-failure policy."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from cpd.data.actions import ActionRecord
from cpd.data.datasets import (
    ActionDataset,
    VideoCaptionDataset,
    collate,
    derive_seed,
    tokenize_captions,
)
from cpd.data.manifests import CaptionRecord
from cpd.errors import DataError, VideoDecodeError

T, S = 4, 8


class FakeTokenizer:
    """Mimics a HF tokenizer call: one id per word (its length), [CLS]=1 ... [SEP]=2, pad 0."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        assert padding == "max_length" and truncation and return_tensors == "pt"
        self.calls += 1
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [1, *[len(w) + 10 for w in text.split()]][: max_length - 1] + [2]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


class FakeLoader:
    """A clip filled with the video's number; files named ``bad*`` fail to decode."""

    def __init__(self, bad: set[int] = frozenset(), exc: Exception | None = None) -> None:
        self.bad = bad
        self.exc = exc
        self.calls: list[tuple[str, int | None]] = []

    def number(self, path: str) -> int:
        return int(Path(path).stem.lstrip("v"))

    def __call__(self, path, seed=None, **kwargs):
        self.calls.append((str(path), seed))
        if self.exc is not None:
            raise self.exc
        k = self.number(path)
        if k in self.bad:
            raise VideoDecodeError(path, "moov atom not found")
        if "num_clips" in kwargs:  # multi-view
            views = kwargs["num_clips"] * kwargs["num_crops"]
            return torch.full(
                (views, 3, kwargs["num_frames"], kwargs["crop_size"], kwargs["crop_size"]), float(k)
            )
        frames, size = kwargs["num_frames"], kwargs["crop_size"]
        # the seed shows in the clip so determinism tests can see it
        return torch.full((3, frames, size, size), float(k)) + (seed % 1000) * 1e-3


def captions(n: int, root: Path = Path("/data")) -> list[CaptionRecord]:
    return [
        CaptionRecord(i, f"v{i}", root / f"v{i}.mp4", f"caption {i} " + "w" * i, "train")
        for i in range(n)
    ]


def caption_dataset(
    n: int = 10, bad=frozenset(), **kwargs
) -> tuple[VideoCaptionDataset, FakeLoader]:
    loader = kwargs.pop("loader", None) or FakeLoader(set(bad))
    ds = VideoCaptionDataset(
        captions(n), FakeTokenizer(), num_frames=T, stride=2, crop_size=S, train=True, hflip=0.5, seed=7,
        max_tokens=6, loader=loader, **kwargs,
    )  # fmt: skip
    return ds, loader


def test_caption_sample_and_collate() -> None:
    ds, loader = caption_dataset()
    sample = ds[3]
    assert set(sample) == {"video", "input_ids", "attention_mask", "index", "caption"}
    assert sample["video"].shape == (3, T, S, S) and sample["video"].dtype == torch.float32
    assert sample["input_ids"].dtype == sample["attention_mask"].dtype == torch.int64
    assert sample["input_ids"].tolist() == [1, 17, 11, 13, 2, 0]
    assert sample["attention_mask"].tolist() == [1, 1, 1, 1, 1, 0]
    assert (sample["index"], sample["caption"]) == (3, "caption 3 www")
    batch = collate([ds[i] for i in range(4)])
    assert batch["video"].shape == (4, 3, T, S, S)
    assert batch["input_ids"].shape == (4, 6) and batch["input_ids"].dtype == torch.int64
    assert batch["index"].tolist() == [0, 1, 2, 3] and batch["index"].dtype == torch.int64
    assert batch["caption"] == [f"caption {i} " + "w" * i for i in range(4)]


def test_captions_tokenised_once_at_construction() -> None:
    tokenizer = FakeTokenizer()
    ds = VideoCaptionDataset(captions(20), tokenizer, max_tokens=4, loader=FakeLoader())
    assert tokenizer.calls == 1
    for i in range(20):
        ds[i]
    assert tokenizer.calls == 1
    assert ds.input_ids.shape == (20, 4) and ds.input_ids[19].tolist() == [
        1,
        17,
        12,
        2,
    ]  # truncated
    ids, mask = tokenize_captions(["a"] * 5, FakeTokenizer(), max_tokens=3, chunk=2)
    assert ids.shape == mask.shape == (5, 3)


def test_default_tokenizer_pads_and_cuts_to_64() -> None:
    records = captions(2)
    records[1] = CaptionRecord(1, "v1", "/data/v1.mp4", "a very long caption " * 40, "train")
    ds = VideoCaptionDataset(records, loader=FakeLoader())  # all-MiniLM-L6-v2 WordPiece, offline
    # the fast path (Rust backend) gives exactly what the tokenizer's own call gives
    texts = [r.caption for r in records] + ["Émoji 🎉 #tag", "", "x"]
    expected = ds.tokenizer(texts, padding="max_length", truncation=True, max_length=64)
    ids, mask = tokenize_captions(texts, ds.tokenizer, 64)
    assert ids.tolist() == expected["input_ids"] and mask.tolist() == expected["attention_mask"]
    assert ds.tokenizer("a b")["input_ids"] == [101, 1037, 1038, 102]  # caller's copy untouched
    short, long = ds[0], ds[1]
    assert short["input_ids"].shape == long["input_ids"].shape == (64,)
    assert short["input_ids"][0] == 101 and long["input_ids"][63] == 102  # [CLS] ... [SEP]
    assert short["attention_mask"].sum() < 64 and long["attention_mask"].sum() == 64
    n = int(short["attention_mask"].sum())
    assert short["input_ids"][n - 1] == 102 and short["input_ids"][n:].eq(0).all()


def test_loader_gets_clip_arguments_and_derived_seed() -> None:
    seen = {}

    def loader(path, **kwargs):
        seen.update(kwargs, path=path)
        return torch.zeros(3, T, S, S)

    ds, _ = caption_dataset(loader=loader, scale_range=(10, 12))
    ds.set_epoch(3)
    ds[5]
    assert seen == dict(
        path="/data/v5.mp4", num_frames=T, stride=2, crop_size=S, train=True, hflip=0.5,
        scale_range=(10, 12), seed=derive_seed(7, 3, 5),
    )  # fmt: skip


def test_clip_randomness_depends_on_seed_epoch_index_only() -> None:
    ds, _ = caption_dataset()
    first = [ds[i]["video"] for i in (4, 2, 4)]
    assert torch.equal(first[0], first[2])  # same (seed, epoch, index), any order
    ds.set_epoch(1)
    assert not torch.equal(ds[4]["video"], first[0])
    other, _ = caption_dataset()  # a fresh process / worker / resumed run
    other.set_epoch(1)
    assert torch.equal(other[4]["video"], ds[4]["video"])
    seeds = {derive_seed(s, e, i) for s in range(3) for e in range(3) for i in range(3)}
    assert len(seeds) == 27


def test_failed_video_replaced_whole_and_deterministically(caplog) -> None:
    ds, loader = caption_dataset(n=10, bad={3})
    with caplog.at_level(logging.WARNING, logger="cpd.data"):
        sample = ds[3]
    j = sample["index"]
    assert j != 3
    assert sample["video"].flatten()[0].round() == j  # the replacement's own video ...
    assert sample["caption"] == f"caption {j} " + "w" * j  # ... with its own caption and tokens
    assert torch.equal(sample["input_ids"], ds.input_ids[j].long())
    assert "v3.mp4" in caplog.text and "moov atom not found" in caplog.text
    # a fresh dataset, and one that met the bad video through another index first, agree
    fresh, _ = caption_dataset(n=10, bad={3})
    assert fresh[3]["index"] == j
    warm, warm_loader = caption_dataset(n=10, bad={3})
    for i in range(10):
        warm[i]
    calls_before = len(warm_loader.calls)
    assert warm[3]["index"] == j
    assert len(warm_loader.calls) == calls_before + 1  # known-bad path not decoded again
    ds.set_epoch(1)
    assert ds[3]["index"] != 3


def test_failure_logged_once_and_never_retried_in_one_call(caplog) -> None:
    bad = set(range(0, 40, 2))  # half the videos fail
    ds, loader = caption_dataset(n=40, bad=bad, max_failure_ratio=1.0)
    with caplog.at_level(logging.WARNING, logger="cpd.data"):
        for epoch in range(3):
            ds.set_epoch(epoch)
            for i in range(40):
                start = len(loader.calls)
                sample = ds[i]
                paths = [p for p, _ in loader.calls[start:]]
                assert len(paths) == len(set(paths))  # never the same path twice in a call
                assert sample["index"] not in bad
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(bad)
    assert len(ds.policy.failed) == len(bad)


def test_stop_when_failure_share_exceeded() -> None:
    ds, _ = caption_dataset(n=100, bad=set(range(0, 100, 4)))  # 25 % fail
    with pytest.raises(DataError, match=r"failed to decode, more than max_failure_ratio=0.05"):
        for i in range(100):
            ds[i]
    assert len(ds.policy.failed) == 6  # stops just past the minimum of 5


def test_a_stream_counts_good_samples_instead_of_naming_them() -> None:
    from cpd.data.stream import StreamFailures

    policy = StreamFailures(max_failure_ratio=0.5, min_failures=1)
    for i in range(3):
        policy.ok(f"good{i}")
    assert policy.counts() == (0, 3) and not policy.seen
    policy.fail(VideoDecodeError("bad0", "broken"), "bad0")
    policy.fail(VideoDecodeError("bad1", "broken"), "bad1")  # 2 of 5: under the ratio
    with pytest.raises(DataError, match=r"4 of 7 samples read in this process failed, more than"):
        for i in range(2, 4):
            policy.fail(VideoDecodeError(f"bad{i}", "broken"), f"bad{i}")


def test_few_failures_do_not_stop() -> None:
    ds, _ = caption_dataset(n=10, bad={0, 5})  # 20 %, but only 2 videos: under the minimum
    for i in range(10):
        assert ds[i]["index"] not in {0, 5}


def test_all_videos_bad_ends_with_error() -> None:
    ds, _ = caption_dataset(n=4, bad={0, 1, 2, 3}, min_failures=10)
    with pytest.raises(DataError, match="no video of the dataset could be decoded"):
        ds[0]


@pytest.mark.parametrize(
    "exc", [RuntimeError("bug in our code"), FileNotFoundError("x"), KeyError("k")]
)
def test_other_exceptions_propagate(exc: Exception) -> None:
    ds, loader = caption_dataset(loader=FakeLoader(exc=exc))
    with pytest.raises(type(exc)):
        ds[0]
    assert len(loader.calls) == 1 and not ds.policy.failed


def test_records_must_be_numbered_in_order() -> None:
    records = captions(5)[2:]
    with pytest.raises(DataError, match="record 0 .* has index 2"):
        VideoCaptionDataset(records, FakeTokenizer(), loader=FakeLoader())


def actions(n: int) -> list[ActionRecord]:
    return [
        ActionRecord(i, f"v{i}", Path(f"/a/v{i}.avi"), i % 3, "abc"[i % 3], "train")
        for i in range(n)
    ]


def test_action_dataset_train_and_multiview() -> None:
    loader = FakeLoader(bad={1})
    train = ActionDataset(actions(6), train=True, num_frames=T, crop_size=S, seed=1, loader=loader)
    sample = train[4]
    assert sample["video"].shape == (3, T, S, S)
    assert (sample["label"], sample["index"]) == (1, 4)
    replaced = train[1]
    assert replaced["label"] == replaced["index"] % 3 and replaced["index"] != 1
    test = ActionDataset(
        actions(6),
        train=False,
        num_frames=T,
        crop_size=S,
        num_clips=5,
        num_crops=3,
        multiview_loader=loader,
    )
    batch = collate([test[i] for i in (0, 2, 5)])
    assert batch["video"].shape == (3, 15, 3, T, S, S)
    assert batch["label"].tolist() == [0, 2, 2] and batch["index"].tolist() == [0, 2, 5]
    assert loader.calls[-1] == ("/a/v5.avi", None)  # test views take no random seed


def test_real_videos_through_cpd_video(tmp_path: Path) -> None:
    video = pytest.importorskip(
        "cpd.video", reason="cpd.video (the video loader) is not written yet"
    )
    if not hasattr(video, "load_clip"):
        pytest.skip("cpd.video.load_clip is not written yet")
    from tests.videos import write_video

    for k in range(3):
        write_video(tmp_path / f"v{k}.mp4", num_frames=40, width=64, height=48)
    (tmp_path / "v3.mp4").write_bytes(b"not a video at all")
    records = [
        CaptionRecord(k, f"v{k}", tmp_path / f"v{k}.mp4", f"clip {k}", "train") for k in range(4)
    ]
    ds = VideoCaptionDataset(records, FakeTokenizer(), num_frames=4, stride=2, crop_size=32, seed=0)
    batch = collate([ds[i] for i in range(4)])
    assert batch["video"].shape == (4, 3, 4, 32, 32) and batch["video"].dtype == torch.float32
    assert (
        batch["index"][3].item() != 3 and batch["caption"][3] == f"clip {batch['index'][3].item()}"
    )
    assert set(ds.policy.failed) == {str(tmp_path / "v3.mp4")}
    assert torch.equal(ds[1]["video"], batch["video"][1])  # same (seed, epoch, index), same clip
    labelled = [
        ActionRecord(k, f"v{k}", r.path, k % 2, "ab"[k % 2], "test") for k, r in enumerate(records)
    ]
    test = ActionDataset(
        labelled, train=False, num_frames=4, stride=2, crop_size=32, num_clips=2, num_crops=3
    )
    sample = test[0]
    assert sample["video"].shape == (6, 3, 4, 32, 32) and sample["label"] == 0
    assert test[3]["index"] != 3  # the garbage file is replaced here too
