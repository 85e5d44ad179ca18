"""Speed benchmarks, each printing one JSON line.

cpd bench load VIDEO... [--clips N] [--num-frames 8 --stride 4 --crop-size 112]
    Training-clip loading in one process with one thread. Three loaders make the same clips
    (clip i uses seed i, hence the same window), taking turns clip by clip so that load from
    other processes falls on all alike; each figure is the median of --repeat passes:
      clips_per_s               cpd.load_clip (train mode)
      decode_bound_clips_per_s  PyAV alone decoding every frame from the keyframe before
                                each window to its end (no conversion, no skipping)
      official_clips_per_s      the official loader's decode + transform path,
                                re-implemented in cpd.video.official
    plus their ratios, frames decoded per clip, cold_index_clips_per_s (no in-process index
    cache: each clip pays its packet scan, as in a first epoch) and cpu_* figures from
    process CPU time, which shared machines disturb less than wall time.
cpd bench step [--arch r3d50 --batch-size 4 --num-frames 8 --crop-size 112] [--device cuda]
    Median seconds of a full pretraining optimizer step (stage I, memory-bank NCE), as
    ``step_s`` (channels-last, bf16 autocast where supported, cached frozen text features) and
    ``baseline_step_s`` (the official way: fp32, contiguous, text encoder run every step);
    ``video_gflop`` is the video encoder's forward + backward arithmetic per step and
    ``video_gflops_per_s`` the rate our step achieves on it (compare with the machine's peak).
cpd bench load VIDEO... --shards, or cpd bench load SHARD.tar...
    Also stream the same clips from a webdataset shard holding the videos (packed into a
    temporary tar; or the given shards, whose videos are unpacked to files for the others):
    shard_clips_per_s and shard_vs_files (its ratio to clips_per_s, both with the index
    cache), shard_cold_index_clips_per_s and shard_vs_files_cold_index (both paying each
    clip's packet scan, as a stream and a file loader at scale do). A packed shard holds one
    sample per clip of a pass, so that a pass reads it forward once, and the file loaders
    read the same samples as files, one each, and the other loaders another copy of them
    (--clips x the video's size on disk, three times).
    shard_vs_files_quartiles: the spread of the block ratios behind shard_vs_files.
cpd bench load --make-sample sample.mp4
    Write the reference input first (640x272, 30 fps, 10 s, x264 with B-frames, moving
    shapes over a panning textured background) and bench it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cpd.commands._options import add_run_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Each benchmark is a sub-subcommand; register new ones in ``_BENCHES`` below."""
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    load = sub.add_parser("load", help="clip loading throughput (one thread)")
    load.add_argument("videos", nargs="*", metavar="VIDEO",
                      help="video files (or .tar shards, whose samples are benched both ways)")  # fmt: skip
    load.add_argument("--shards", action="store_true",
                      help="also stream the same clips from a shard holding the videos")  # fmt: skip
    load.add_argument("--clips", type=int, default=100, help="clips per timed pass (default 100)")
    load.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="timed passes of each loader, interleaved; medians are reported",
    )
    load.add_argument(
        "--block",
        type=int,
        default=10,
        help="clips each loader makes before the next one takes its turn",
    )
    load.add_argument("--num-frames", type=int, default=8)
    load.add_argument("--stride", type=int, default=4)
    load.add_argument("--crop-size", type=int, default=112)
    load.add_argument(
        "--make-sample",
        metavar="PATH",
        help="write the reference 640x272 H.264 sample to PATH (and bench it)",
    )
    step = sub.add_parser("step", help="pretraining optimizer step time, ours vs the official way")
    step.add_argument("--arch", default="r3d50", help="video encoder (default r3d50)")
    step.add_argument("--batch-size", type=int, default=4)
    step.add_argument("--num-frames", type=int, default=8)
    step.add_argument("--crop-size", type=int, default=112)
    step.add_argument("--text-encoder", default="distilbert-base-uncased",
                      help="text encoder (default: DistilBERT, the paper's, random weights)")  # fmt: skip
    step.add_argument("--num-negatives", type=int, default=16384, help="NCE negatives K")
    step.add_argument("--num-data", type=int, default=20000, help="memory-bank rows N")
    step.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    step.add_argument("--warmup", type=int, default=2)
    step.add_argument("--device", default="auto",
                      help="auto (default: a GPU when there is one), cpu, cuda, cuda:1, ...")  # fmt: skip
    step.add_argument("--amp", choices=["auto", "bf16", "fp16", "none"], default="auto",
                      help="autocast dtype of our step (auto: bf16 on CUDA / bf16 CPUs)")  # fmt: skip
    step.add_argument("--no-baseline", action="store_true", help="skip the official-way step")
    for name, bench in (("load", load), ("step", step)):
        add_run_options(bench, out=f"runs/bench_{name}", device=False, workers=None,
                        threads=name == "step", quiet=False)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the benchmark named by ``args.bench``."""
    return _BENCHES[args.bench](args)


def _report(result: dict, out: str) -> int:
    """Print ``result`` as one JSON line (what scripts read) and write OUT/results.json."""
    path = Path(out) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return 0


def write_sample(
    path: str | Path,
    width: int = 640,
    height: int = 272,
    fps: int = 30,
    seconds: float = 10.0,
    gop: int = 60,
    bframes: int = 3,
) -> Path:
    """Write a natural-ish test video: a panning gradient, textured ground, moving shapes.

    Random noise compresses badly and is unrealistic; smooth motion gives x264 the P/B-frame
    structure of real footage. GOP 60 (2 s) and 3 B-frames (x264's default) are typical of
    web video.
    """
    import av

    path = Path(path)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = np.random.default_rng(0).integers(0, 24, (height, width * 2), dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {
            "bf": str(bframes),
            "g": str(gop),
            "keyint_min": str(gop),
            "crf": "23",
            "preset": "medium",
        }
        for i in range(int(seconds * fps)):
            t = i / fps
            img = np.empty((height, width, 3), np.float32)
            img[..., 0] = 110 + 60 * np.sin(xx / 90 + t * 0.8) * np.cos(yy / 70)
            img[..., 1] = 120 + 50 * np.sin(yy / 50 - t * 0.5)
            img[..., 2] = 130 + 60 * np.cos((xx + yy) / 120 + t * 0.3)
            shift = int(t * 40) % width  # a camera pan over a fixed texture on the lower half
            img[height // 2 :] += texture[height // 2 :, shift : shift + width, None]
            for k in range(5):
                cx = width / 2 + width * 0.35 * np.sin(t * (0.7 + 0.3 * k) + k)
                cy = height / 2 + height * 0.3 * np.cos(t * (0.5 + 0.2 * k) + 2 * k)
                r = 18 + 6 * k
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
                img[mask] = (40 * k + 30, 200 - 30 * k, 60 + 35 * k)
            frame = av.VideoFrame.from_ndarray(img.clip(0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _bench_load(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cpd-bench-") as scratch:
        return _bench_load_in(args, Path(scratch))


def _bench_load_in(args: argparse.Namespace, scratch: Path) -> int:
    """``cpd bench load`` with ``scratch`` for the unpacked or packed videos."""
    import torch

    from cpd.video import sampling
    from cpd.video.clip import load_clip
    from cpd.video.decode import DecodeStats, forget_index, open_video, video_index
    from cpd.video.official import official_clip
    from cpd.video.transforms import default_scale_range, make_generator

    torch.set_num_threads(1)
    videos = [v for v in args.videos if not v.endswith(".tar")]
    tars = [v for v in args.videos if v.endswith(".tar")]
    if args.make_sample:
        videos.append(str(write_sample(args.make_sample)))
    _unpacked: list[str] = []
    if tars:  # the shards' videos as files too, in shard order
        _unpacked = _unpack(tars, scratch)
        videos += _unpacked
    if not videos:
        raise SystemExit("cpd bench load: give VIDEO files or --make-sample PATH")
    files = videos  # what the file loaders read: file i % len(files) for clip i
    others = files  # what the decode-only and official loaders read
    shard = shard_cold = None
    if tars or args.shards:
        # the shard must hold exactly the videos the file loaders use, in their order
        shard_tars = tars if len(tars) and len(videos) == len(_unpacked) else []
        if not shard_tars:
            # a packed shard holds one sample per clip of a pass (video i % len(videos)), so
            # that a pass reads it forward once, as a training stream reads a shard of many
            # samples; the file loaders read the same samples unpacked, one file each, so that
            # neither side rereads bytes the other reads afresh
            shard_tars = [str(_pack(videos, scratch / "bench.tar", max(len(videos), args.clips)))]
            files = _unpack(shard_tars, scratch / "files")
        tables = [scratch / "index"]  # the shards' member tables, made in the warm-up
        # the other file readers get their own copies: a loader reading bytes that another one
        # has just read may find them in the CPU caches, so the file and the
        # shard loaders each share their bytes with their cold twin only
        others = _unpack(shard_tars, scratch / "others")
        shard = _ShardCycle(shard_tars, len(files), tables)
        # its own reader for the cold loader: two loaders on one would restart each other
        shard_cold = _ShardCycle(shard.tars, len(files), tables)
    nf, stride, crop = args.num_frames, args.stride, args.crop_size
    scale_range = default_scale_range(crop)

    # each loader makes clip i of the pass; clip i uses the same window in all of them
    def ours(i: int, stats: DecodeStats) -> None:
        load_clip(files[i % len(files)], nf, stride, crop, train=True, seed=i, stats=stats)

    # cold loaders forget only their own video's scan: the others keep theirs cached
    def ours_cold(i: int, stats: DecodeStats) -> None:
        forget_index(files[i % len(files)])
        ours(i, stats)

    def bound(i: int, stats: DecodeStats) -> None:
        with open_video(others[i % len(others)]) as video:
            n, fps = video.index.num_frames, video.index.fps
            # the same first draw as load_clip(seed=i): the same window
            idx = sampling.random_window(n, nf, stride, fps, make_generator(i))
            video.span(idx[0], idx[-1], stats)

    def official(i: int, stats: DecodeStats) -> None:
        path = others[i % len(others)]
        rngs = random.Random(i), np.random.default_rng(i)
        official_clip(path, *rngs, nf, stride, crop, scale_range, stats)

    def streamed(i: int, stats: DecodeStats) -> None:
        assert shard is not None
        load_clip(shard.get(i % shard.count), nf, stride, crop, train=True, seed=i, stats=stats)

    def streamed_cold(i: int, stats: DecodeStats) -> None:
        assert shard_cold is not None
        video = shard_cold.get(i % shard_cold.count)
        forget_index(video)
        load_clip(video, nf, stride, crop, train=True, seed=i, stats=stats)

    loaders = {"ours": ours, "ours_cold_index": ours_cold, "bound": bound, "official": official}
    if shard is not None:
        loaders["shards"] = streamed
        loaders["shards_cold_index"] = streamed_cold
        for k in range(shard.count):  # every sample's index cached, as every file's will be
            video_index(shard.get(k))
    names = list(loaders)
    wall: dict[str, list[float]] = {k: [] for k in loaders}
    cpu: dict[str, list[float]] = {k: [] for k in loaders}
    frames: dict[str, float] = {}
    for name in names:  # warm-up: index cache, allocator, swscale contexts
        for i in range(min(args.clips, 5)):
            loaders[name](i, DecodeStats())
    blocks: list[dict[str, float]] = []  # seconds of each loader on each block of clips
    for r in range(args.repeat):
        spent = {k: [0.0, 0.0] for k in names}
        stats = {k: DecodeStats() for k in names}
        # the loaders take turns in blocks of clips, so that load from other processes on a
        # shared machine falls on all of them alike; blocks rather than single clips, so that
        # each runs with warm caches as it would in a data loader. Each block draws its order
        # from (pass, block): in a fixed cycle each loader would always follow the same one,
        # and what a loader follows changes its speed (in a fixed cycle the file loader
        # followed the shard loaders and measured 2% faster than them; in drawn orders, even)
        for b, first in enumerate(range(0, args.clips, args.block)):
            block = range(first, min(first + args.block, args.clips))
            taken: dict[str, float] = {}
            for k in np.random.default_rng([r, b]).permutation(len(names)).tolist():
                name = names[k]
                w0, c0 = time.perf_counter(), time.process_time()
                for i in block:
                    loaders[name](i, stats[name])
                taken[name] = time.perf_counter() - w0
                spent[name][0] += taken[name]
                spent[name][1] += time.process_time() - c0
            blocks.append(taken)
        for name in names:
            wall[name].append(args.clips / spent[name][0])
            cpu[name].append(args.clips / max(spent[name][1], 1e-9))
            frames[name] = stats[name].frames_decoded / args.clips
    w = {k: statistics.median(v) for k, v in wall.items()}
    c = {k: statistics.median(v) for k, v in cpu.items()}
    result = {
        "clips_per_s": round(w["ours"], 2),
        "decode_bound_clips_per_s": round(w["bound"], 2),
        "official_clips_per_s": round(w["official"], 2),
        "speedup_vs_official": round(w["ours"] / w["official"], 2),
        "fraction_of_decode_bound": round(w["ours"] / w["bound"], 3),
        "frames_decoded_per_clip": round(frames["ours"], 2),
        "decode_bound_frames_per_clip": round(frames["bound"], 2),
        "official_frames_decoded_per_clip": round(frames["official"], 2),
        # without the in-process index cache (each clip pays a packet scan): a first epoch
        "cold_index_clips_per_s": round(w["ours_cold_index"], 2),
        # the same from process CPU time, steadier than wall time on a shared machine
        "cpu_clips_per_s": {k: round(v, 2) for k, v in c.items()},
        "cpu_speedup_vs_official": round(c["ours"] / c["official"], 2),
        "cpu_fraction_of_decode_bound": round(c["ours"] / c["bound"], 3),
        "wall_runs": {k: [round(r, 2) for r in v] for k, v in wall.items()},
        "clips": args.clips,
        "repeat": args.repeat,
        "block": args.block,
        "num_frames": nf,
        "stride": stride,
        "crop_size": crop,
        "threads": torch.get_num_threads(),
        "videos": videos,
        "files": len(files),  # distinct files the file loaders read
    }
    if shard is not None:
        # the same clips read from the tar; each ratio is the median over the blocks of clips
        # of the two loaders' rates on that block (made side by side, so the machine's load
        # drifts out of it)
        def ratio(a: str, b: str) -> float:
            return round(statistics.median(t[b] / t[a] for t in blocks), 3)

        def quartiles(a: str, b: str) -> list[float]:
            values = [t[b] / t[a] for t in blocks]
            if len(values) < 2:
                return [round(values[0], 3)] * 3
            return [round(q, 3) for q in statistics.quantiles(values, n=4)]

        result["shard_clips_per_s"] = round(w["shards"], 2)
        result["shard_cold_index_clips_per_s"] = round(w["shards_cold_index"], 2)
        result["shard_vs_files"] = ratio("shards", "ours")
        # a stream meets each sample once an epoch, as files are met at scale: both pay the scan
        result["shard_vs_files_cold_index"] = ratio("shards_cold_index", "ours_cold_index")
        # how much the block ratios spread (first quartile, median, third quartile)
        result["shard_vs_files_quartiles"] = quartiles("shards", "ours")
        result["shard_vs_files_cold_index_quartiles"] = quartiles(
            "shards_cold_index", "ours_cold_index"
        )
        result["shards"] = shard.tars
    return _report(result, args.out)


def _pack(videos: list[str], tar: Path, count: int) -> Path:
    """One shard of ``count`` samples, sample k holding ``videos[k % len(videos)]`` (keys
    000000000, 000000001, ...)."""
    import webdataset as wds

    with wds.TarWriter(str(tar)) as sink:
        for k in range(count):
            video = videos[k % len(videos)]
            suffix = Path(video).suffix.lstrip(".").lower() or "mp4"
            sink.write({"__key__": f"{k:09d}", suffix: Path(video).read_bytes(), "txt": b"bench"})
    return tar


def _unpack(tars: list[str], folder: Path) -> list[str]:
    """The videos of the shards' samples written as files, in shard order."""
    from cpd.data.shards import iter_shard

    out = []
    folder.mkdir(parents=True, exist_ok=True)
    for s, url in enumerate(tars):
        for raw in iter_shard(url, s):
            suffix, data = raw.video()
            path = folder / f"{s:05d}_{raw.key}.{suffix}"
            path.write_bytes(data)
            out.append(str(path))
    return out


class _ShardCycle:
    """Sample ``k`` of the shards' sequence as a video source (``RawSample.video_source``),
    read forward through the tars as a training stream reads them (restarting from the first
    tar when a pass asks for an earlier sample); ``tables`` keep the tars' member tables."""

    def __init__(self, tars: list[str], count: int, tables: list[Path]) -> None:
        self.tars, self.count = [str(t) for t in tars], count  # count: samples in the tars
        self.tables = tables
        self.position, self.stream = 0, self._open()

    def _open(self):  # type: ignore[no-untyped-def]
        from cpd.data.shards import iter_shard

        return (raw for s, url in enumerate(self.tars)
                for raw in iter_shard(url, s, table_dirs=self.tables))  # fmt: skip

    def get(self, k: int):  # type: ignore[no-untyped-def]
        if k < self.position:
            self.position, self.stream = 0, self._open()
        while True:
            raw = next(self.stream)
            self.position += 1
            if self.position - 1 == k:
                return raw.video_source(f"{self.tars[raw.shard]}#{raw.key}")


def _bench_step(args: argparse.Namespace) -> int:
    import torch

    from cpd.train.benchmark import bench_step

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    result = bench_step(
        args.arch, args.batch_size, args.num_frames, args.crop_size,
        text_encoder=args.text_encoder, num_data=args.num_data,
        num_negatives=args.num_negatives, steps=args.steps, warmup=args.warmup,
        device=device, amp=args.amp, baseline=not args.no_baseline,
    )  # fmt: skip
    return _report(result, args.out)


_BENCHES = {"load": _bench_load, "step": _bench_step}
