"""The embedded synthetic video-caption dataset: small enough for a CPU, no downloads.

Every video is a real H.264 mp4 (libx264, yuv420p) of one glyph (square, triangle, star, ...)
in one colour over a static procedural texture (stripes, checkerboard, dots, ...), doing one of
eight motions that stay uniform over the whole video, so any random window of 8 frames at
stride 4 (about 1 s at 30 fps) shows it:

    MovingLeft / MovingRight, MovingUp / MovingDown,
    RotatingClockwise / RotatingCounterclockwise, Growing / Shrinking.

Each pair differs only in the order of time, so a model must see temporal order, not just
frames, to tell them apart. A random crop or rescale keeps every motion what it is; a
horizontal flip swaps left and right (and the sense of rotation), so the dataset declares
``"hflip": false`` in ``dataset.json`` and the training pipeline must not flip it.

Why appearance groups. On an earlier set of this kind (6 colours x 6 glyphs x 8 motions, 480
pairs, all drawn independently) plain CPD learnt appearance within 90 s and no motion in 9 min,
because appearance alone already told the captions in a batch apart. Here the set is built from *appearance groups*: one sampled
appearance (colour, glyph, background texture and its colours) is rendered with several
motions (``motions_per_group``, default 4, drawn as whole time-reversal pairs, e.g. MovingLeft,
MovingRight, Growing, Shrinking). Videos of a group share the exact background and glyph and
differ in motion (plus small jitter); their captions name the same colour and glyph and differ
in the motion words (and in paraphrase), so within a batch the only way to match the clips of
a group to their captions is to see the motion.

Variation: per group the colour shade, glyph size, background kind, colours, angle and scale;
per video the start position, speed (with a smooth speed wobble), rotation rate, growth rate,
orientation and a small positional jitter. Captions come from templates with synonyms for
colour, glyph, motion and background ("a crimson star drifts to the left over a striped
background", "video of a blue box spinning clockwise"), so the text encoder must generalise.

Checked on an H100 with rendered (not encoded) frames, 8 frames at stride 4, scale jitter
[128, 170], crop 112, no flip: a supervised r3d10 (width 32, batch 64, AdamW 1e-3) reaches 68%
val accuracy on the 8 motions after 50 steps, 90% after 200 and 99% after about 700; the same
model fed one frame repeated 8 times stays at chance (about 10%), so the labels need motion.

Splits: whole groups go to train or val (like UCF101's groups), about ``val_fraction`` of them;
val groups are chosen among those whose colour and glyph also appear in a train group, so val
asks for the same concepts on new videos. Everything is a pure function of ``seed``: each
group's and each video's randomness comes from its own ``numpy`` generator seeded with
(seed, stream, index), so the output is identical for any number of workers.

Layout written by :func:`write_synthetic_dataset` (``dataset.json`` last, so a directory
without it is an interrupted run)::

    OUT/captions.jsonl                  {"video", "caption", "split", "id", "motion", ...}
    OUT/videos/<Motion>/v_<Motion>_g<GG>_c<CC>.mp4
    OUT/ucfTrainTestlist/classInd.txt, trainlist01.txt, testlist01.txt
    OUT/results.json                    the summary returned
    OUT/dataset.json                    metadata: classes, hflip=false, recommended clip
"""

from __future__ import annotations

import colorsys
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cpd.data.render import (
    BACKGROUNDS,
    DIRECTIONS,
    SHAPES,
    Appearance,
    VideoSpec,
    encode_mp4,
    render_video,
)
from cpd.errors import CPDError

NAME = "cpd-synthetic"
VERSION = 1

MOTIONS: tuple[str, ...] = (
    "MovingLeft",
    "MovingRight",
    "MovingUp",
    "MovingDown",
    "RotatingClockwise",
    "RotatingCounterclockwise",
    "Growing",
    "Shrinking",
)
# motions that are each other's time reversal; groups draw whole pairs
MOTION_PAIRS: tuple[tuple[str, str], ...] = tuple(zip(MOTIONS[::2], MOTIONS[1::2], strict=True))

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.88, 0.12, 0.12),
    "green": (0.12, 0.72, 0.2),
    "blue": (0.16, 0.32, 0.95),
    "yellow": (0.96, 0.86, 0.1),
    "purple": (0.6, 0.2, 0.82),
    "orange": (1.0, 0.55, 0.05),
}


def class_words(name: str) -> str:
    """Split a CamelCase class name into lower-case words: ``"MovingLeft"`` -> ``"moving left"``."""
    return " ".join(w.lower() for w in re.findall(r"[A-Z][a-z0-9]*|[a-z0-9]+", name))


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def _balanced(items: list[Any], n: int, rng: np.random.Generator) -> list[Any]:
    """``n`` items cycling through shuffled copies of ``items``: every item equally often."""
    out: list[Any] = []
    while len(out) < n:
        out.extend(items[i] for i in rng.permutation(len(items)))
    return out[:n]


def _appearance(seed: int, group: int, colour: str, shape: str, background: str) -> Appearance:
    rng = _rng(seed, 1, group)
    rgb = tuple(
        float(c) for c in np.clip(np.array(COLOURS[colour]) + rng.uniform(-0.06, 0.06, 3), 0, 1)
    )
    # muted backgrounds (low saturation, mid value) so the saturated glyph always stands out
    hue, sat = rng.random(), rng.uniform(0.08, 0.35)
    v0 = rng.uniform(0.3, 0.5)
    v1 = min(v0 + rng.uniform(0.12, 0.3), 0.85)
    hue1 = (hue + rng.uniform(-0.08, 0.08)) % 1.0
    bg = (colorsys.hsv_to_rgb(hue, sat, v0), colorsys.hsv_to_rgb(hue1, sat, v1))
    if rng.random() < 0.5:
        bg = bg[::-1]
    return Appearance(
        group=group, colour=colour, rgb=rgb, shape=shape, background=background,
        bg_colours=bg, bg_angle=float(rng.uniform(0, 180)), bg_period=float(rng.uniform(10, 24)),
        bg_seed=int(rng.integers(2**31)), radius=float(rng.uniform(0.1, 0.14)),
    )  # fmt: skip


def _video(
    seed: int, index: int, name: str, motion: str, clip: int, split: str, look: Appearance,
    width: int, height: int, num_frames: int, fps: float,
) -> VideoSpec:  # fmt: skip
    rng = _rng(seed, 2, index)
    short = min(width, height)
    duration = (num_frames - 1) / fps
    radius = look.radius * short * rng.uniform(0.9, 1.1)
    wobble = (
        float(rng.uniform(0, 0.4)),
        float(rng.uniform(0.5, 1.5)),
        float(rng.uniform(0, 2 * math.pi)),
    )
    jitter = (float(rng.uniform(0.3, 1.0)), float(rng.uniform(0.5, 2.0)),
              float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 2 * math.pi)))  # fmt: skip
    speed = omega = growth = 0.0
    angle0 = float(rng.uniform(0, 360))
    # the other motions sit still somewhere in the middle, so position alone tells nothing
    centre = (float(rng.uniform(0.32, 0.68) * width), float(rng.uniform(0.32, 0.68) * height))
    if motion in DIRECTIONS:
        dx, _ = DIRECTIONS[motion]
        extent = width if dx else height
        # a fraction of the frame per second, capped so that the path stays on screen
        frac = min(rng.uniform(0.22, 0.3), 0.66 / max(duration, 1e-6))
        speed = float(frac * extent)
        along = float(rng.uniform(0.44, 0.56) * extent)
        centre = (along, centre[1]) if dx else (centre[0], along)
    elif motion.startswith("Rotating"):
        sign = 1.0 if motion == "RotatingClockwise" else -1.0
        # <= 19 degrees per 4 frames: far below the 36 degrees at which a star aliases
        omega = sign * float(rng.uniform(90, 140))
    elif motion in ("Growing", "Shrinking"):
        sign = 1.0 if motion == "Growing" else -1.0
        # about x1.5-1.8 per second, at most x3.5 end to end so the glyph stays visible
        growth = sign * float(min(rng.uniform(0.42, 0.6), math.log(3.5) / max(duration, 1e-6)))
        radius *= 1.05
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return VideoSpec(
        index=index, name=name, motion=motion, clip=clip, split=split, look=look, width=width,
        height=height, num_frames=num_frames, fps=fps, radius=float(radius), centre=centre,
        speed=speed, angle0=angle0, omega=omega, growth=growth, wobble=wobble, jitter=jitter,
    )  # fmt: skip


def _choose_val(looks: list[Appearance], n_val: int, rng: np.random.Generator) -> set[int]:
    """Val groups: prefer those whose (colour, shape) stays represented in train."""
    remaining: dict[tuple[str, str], int] = {}
    for look in looks:
        key = (look.colour, look.shape)
        remaining[key] = remaining.get(key, 0) + 1
    order = [int(g) for g in rng.permutation(len(looks))]
    val: set[int] = set()
    for g in order:
        key = (looks[g].colour, looks[g].shape)
        if len(val) < n_val and remaining[key] >= 2:
            val.add(g)
            remaining[key] -= 1
    # tiny sets cannot keep every combination in train: fill up in the same random order
    for g in order:
        if len(val) < n_val:
            val.add(g)
    return val


def make_video_specs(
    num_videos: int = 480,
    *,
    seed: int = 0,
    width: int = 128,
    height: int = 128,
    num_frames: int = 75,
    fps: float = 30.0,
    motions_per_group: int = 4,
    val_fraction: float = 0.2,
) -> list[VideoSpec]:
    """The specs of every video of the dataset, in order (group by group)."""
    _check_args(num_videos, seed, width, height, num_frames, fps, motions_per_group, val_fraction)
    num_groups = math.ceil(num_videos / motions_per_group)
    rng = _rng(seed, 0, 0)
    combos = _balanced([(c, s) for c in COLOURS for s in SHAPES], num_groups, rng)
    backgrounds = _balanced(list(BACKGROUNDS), num_groups, rng)
    num_pairs = math.ceil(motions_per_group / 2)
    pair_sets = [
        tuple(p for i, p in enumerate(MOTION_PAIRS) if mask >> i & 1)
        for mask in range(1 << len(MOTION_PAIRS))
        if bin(mask).count("1") == num_pairs
    ]
    pair_sets = _balanced(pair_sets, num_groups, rng)
    looks = [_appearance(seed, g, *combos[g], backgrounds[g]) for g in range(num_groups)]
    n_val = round(val_fraction * num_groups) if num_groups > 1 else 0
    val = _choose_val(looks, n_val, rng)
    digits = max(2, len(str(num_groups)))
    specs: list[VideoSpec] = []
    for g, look in enumerate(looks):
        motions = [m for pair in pair_sets[g] for m in pair]
        if len(motions) > motions_per_group:  # odd count: drop one motion at random
            motions.pop(int(_rng(seed, 3, g).integers(len(motions))))
        motions = motions[: num_videos - len(specs)]
        for c, motion in enumerate(motions, start=1):
            name = f"v_{motion}_g{g + 1:0{digits}d}_c{c:02d}"
            split = "val" if g in val else "train"
            specs.append(_video(seed, len(specs), name, motion, c, split, look,
                                width, height, num_frames, fps))  # fmt: skip
    return specs


def _check_args(
    num_videos: int, seed: int, width: int, height: int, num_frames: int, fps: float,
    per_group: int, val_fraction: float,
) -> None:  # fmt: skip
    problems = []
    if num_videos < 1:
        problems.append(f"num_videos must be >= 1, got {num_videos}")
    if seed < 0:
        problems.append(f"seed must be >= 0, got {seed}")
    if width < 32 or height < 32 or width % 2 or height % 2:
        problems.append(f"width and height must be even and >= 32, got {width}x{height}")
    if num_frames < 2:
        problems.append(f"num_frames must be >= 2, got {num_frames}")
    if not fps > 0:
        problems.append(f"fps must be > 0, got {fps}")
    if not 1 <= per_group <= len(MOTIONS):
        problems.append(f"motions_per_group must be in [1, {len(MOTIONS)}], got {per_group}")
    if not 0 <= val_fraction < 1:
        problems.append(f"val_fraction must be in [0, 1), got {val_fraction}")
    if problems:
        raise CPDError("invalid synthetic dataset settings: " + "; ".join(problems))


# --- captions ---------------------------------------------------------------------------

COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "grass-green"),
    "blue": ("blue", "cobalt", "deep blue"),
    "yellow": ("yellow", "golden", "lemon-yellow"),
    "purple": ("purple", "violet", "plum-coloured"),
    "orange": ("orange", "tangerine", "amber"),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangular shape", "three-sided shape"),
    "star": ("star", "five-pointed star", "star shape"),
    "cross": ("cross", "plus sign", "plus shape"),
    "heart": ("heart", "heart shape", "love heart"),
    "crescent": ("crescent", "crescent moon", "moon shape"),
}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "stripes": ("striped", "stripy", "banded"),
    "checkerboard": ("checkered", "chequered", "checkerboard"),
    "dots": ("dotted", "polka-dot", "spotted"),
    "clouds": ("cloudy", "mottled", "blotchy"),
    "gradient": ("gradient", "smoothly shaded", "softly fading"),
    "grid": ("grid", "gridded", "lattice"),
}
# verb phrases in the base form; the first word is conjugated (see conjugate)
MOTION_WORDS: dict[str, tuple[str, ...]] = {
    "MovingLeft": ("move left", "move to the left", "drift to the left", "slide leftwards",
                   "travel from right to left", "glide toward the left edge"),
    "MovingRight": ("move right", "move to the right", "drift to the right", "slide rightwards",
                    "travel from left to right", "glide toward the right edge"),
    "MovingUp": ("move up", "rise", "drift upwards", "travel from bottom to top",
                 "float up", "climb toward the top"),
    "MovingDown": ("move down", "sink", "drift downwards", "travel from top to bottom",
                   "fall", "slide toward the bottom"),
    "RotatingClockwise": ("rotate clockwise", "spin clockwise", "turn clockwise",
                          "revolve in a clockwise direction", "twirl clockwise"),
    "RotatingCounterclockwise": ("rotate counterclockwise", "spin anticlockwise",
                                 "turn counter-clockwise", "revolve in an anticlockwise direction",
                                 "twirl anticlockwise"),
    "Growing": ("grow", "get bigger", "expand", "grow larger", "swell in size",
                "increase in size"),
    "Shrinking": ("shrink", "get smaller", "contract", "shrink in size", "dwindle",
                  "decrease in size"),
}  # fmt: skip
_GERUND = {"spin": "spinning", "get": "getting", "travel": "travelling"}
_TEMPLATES = (
    "{a} {colour} {shape} {v3}{bg}",
    "the {colour} {shape} {v3}{bg}",
    "video of {a} {colour} {shape} {ving}{bg}",
    "{a} {colour} {shape} {ving}{bg}",
    "{colour} {shape} {ving}{bg}",
    "footage showing {a} {colour} {shape} that {v3}{bg}",
    "watch the {colour} {shape} {v}{bg}",
    "here {a} {colour} {shape} {v3}{bg}",
    "a clip in which the {colour} {shape} {v3}{bg}",
    "{bg_first}, {a} {colour} {shape} {v3}",
)
_BG_PHRASES = (" over a {adj} background", " on a {adj} backdrop", " against a {adj} background",
               " in front of a {adj} pattern")  # fmt: skip


def conjugate(phrase: str, form: str) -> str:
    """Conjugate the leading verb of a base-form phrase: ``form`` is "base", "3rd" or "ing"."""
    verb, _, rest = phrase.partition(" ")
    if form == "3rd":
        verb += "s"
    elif form == "ing":
        verb = _GERUND.get(verb) or (verb[:-1] + "ing" if verb.endswith("e") else verb + "ing")
    return f"{verb} {rest}".rstrip()


def make_caption(spec: VideoSpec, seed: int) -> str:
    """One natural caption for a video; a pure function of (seed, video index)."""
    rng = _rng(seed, 4, spec.index)

    def pick(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    template = pick(_TEMPLATES)
    verb = pick(MOTION_WORDS[spec.motion])
    colour = pick(COLOUR_WORDS[spec.look.colour])
    adj = pick(BACKGROUND_WORDS[spec.look.background])
    # the background is named in about half of the captions (always in the bg-first template)
    bg = pick(_BG_PHRASES).format(adj=adj) if rng.random() < 0.5 else ""
    text = template.format(
        a="an" if colour[0] in "aeiou" else "a", colour=colour,
        shape=pick(SHAPE_WORDS[spec.look.shape]), v=conjugate(verb, "base"),
        v3=conjugate(verb, "3rd"), ving=conjugate(verb, "ing"), bg=bg,
        bg_first=f"on a {adj} background",
    )  # fmt: skip
    if rng.random() < 0.3:  # some captions read as sentences
        text = text[0].upper() + text[1:] + "."
    return text


# --- the dataset on disk ----------------------------------------------------------------

_OUTPUTS = ("dataset.json", "results.json", "captions.jsonl", "videos", "ucfTrainTestlist")


def _prepare(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CPDError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise CPDError(f"{out}: directory is not empty (use --force / force=True to overwrite)")
        # dataset.json first: from here on the directory no longer reads as complete
        for name in _OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def recommended_clip(width: int, height: int) -> dict[str, Any]:
    """Clip settings for training on this data: 8 frames at stride 4, crop 112 at 128 px."""
    short = min(width, height)
    crop = 2 * round(short * 112 / 128 / 2)
    return {"num_frames": 8, "stride": 4, "crop_size": crop,
            "scale": [short, round(short * 170 / 128)], "hflip": False}  # fmt: skip


def write_synthetic_dataset(
    out_dir: str | Path,
    *,
    num_videos: int = 480,
    seed: int = 0,
    workers: int = 2,
    width: int = 128,
    height: int = 128,
    num_frames: int = 75,
    fps: float = 30.0,
    motions_per_group: int = 4,
    val_fraction: float = 0.2,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Render and write the whole dataset under ``out_dir``; returns the summary (results.json).

    Raises ``CPDError`` for invalid settings or a non-empty ``out_dir`` without ``force``.
    The output depends only on the settings and ``seed``, never on ``workers``.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    specs = make_video_specs(num_videos, seed=seed, width=width, height=height,
                             num_frames=num_frames, fps=fps,
                             motions_per_group=motions_per_group, val_fraction=val_fraction)  # fmt: skip
    out = Path(out_dir)
    _prepare(out, force)
    for motion in sorted({s.motion for s in specs}):
        (out / "videos" / motion).mkdir(parents=True, exist_ok=True)
    jobs = [(spec, str(out)) for spec in specs]
    bar = tqdm(total=len(jobs), desc="synth", unit="video", file=sys.stderr, disable=not progress)
    if workers <= 1:
        sizes = []
        for job in jobs:
            sizes.append(_write_one(job))
            bar.update()
    else:
        # spawn, not fork: the caller may hold threads (torch, tqdm) that fork would copy
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            sizes = []
            for size in pool.imap_unordered(_write_one, jobs, chunksize=4):
                sizes.append(size)
                bar.update()
    bar.close()

    lines = []
    for spec in specs:
        record = {"video": spec.path, "caption": make_caption(spec, seed), "split": spec.split,
                  "id": spec.name, "motion": spec.motion, "colour": spec.look.colour,
                  "shape": spec.look.shape, "background": spec.look.background,
                  "group": spec.look.group + 1}  # fmt: skip
        lines.append(json.dumps(record) + "\n")
    _write_text(out / "captions.jsonl", "".join(lines))
    _write_ucf_lists(out / "ucfTrainTestlist", specs)

    per_class = {m: {"train": 0, "val": 0} for m in MOTIONS}
    for spec in specs:
        per_class[spec.motion][spec.split] += 1
    splits = {s: sum(c[s] for c in per_class.values()) for s in ("train", "val")}
    total_bytes = sum(sizes) + sum(p.stat().st_size for p in out.rglob("*") if p.is_file()
                                   and p.suffix != ".mp4")  # fmt: skip
    summary = {
        "out_dir": str(out), "num_videos": len(specs),
        "num_groups": len({s.look.group for s in specs}), "splits": splits,
        "per_class": per_class, "seed": seed, "workers": workers,
        "seconds": round(time.perf_counter() - start, 2), "bytes": total_bytes,
    }  # fmt: skip
    _write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
    meta = {
        "name": NAME, "version": VERSION, "seed": seed, "hflip": False,
        "classes": list(MOTIONS), "class_words": {m: class_words(m) for m in MOTIONS},
        "colours": list(COLOURS), "shapes": list(SHAPES), "backgrounds": list(BACKGROUNDS),
        "fps": fps, "size": {"width": width, "height": height}, "num_frames": num_frames,
        "num_videos": len(specs), "motions_per_group": motions_per_group, "splits": splits,
        "recommended": recommended_clip(width, height),
        "files": {"captions": "captions.jsonl", "videos": "videos",
                  "class_index": "ucfTrainTestlist/classInd.txt",
                  "train_list": "ucfTrainTestlist/trainlist01.txt",
                  "test_list": "ucfTrainTestlist/testlist01.txt"},
    }  # fmt: skip
    _write_text(out / "dataset.json", json.dumps(meta, indent=2) + "\n")  # last: marks complete
    return summary


def _write_one(job: tuple[VideoSpec, str]) -> int:
    spec, root = job
    path = Path(root) / spec.path
    encode_mp4(path, render_video(spec), spec.fps)
    return path.stat().st_size


def _write_ucf_lists(folder: Path, specs: list[VideoSpec]) -> None:
    """The action view in UCF101's layout: 1-based class index, train list, test list."""
    folder.mkdir(parents=True, exist_ok=True)
    label = {m: i for i, m in enumerate(MOTIONS, start=1)}
    ordered = sorted(specs, key=lambda s: (label[s.motion], s.name))
    _write_text(folder / "classInd.txt", "".join(f"{i} {m}\n" for m, i in label.items()))
    _write_text(
        folder / "trainlist01.txt",
        "".join(
            f"{s.motion}/{s.name}.mp4 {label[s.motion]}\n" for s in ordered if s.split == "train"
        ),
    )
    _write_text(folder / "testlist01.txt", "".join(
        f"{s.motion}/{s.name}.mp4\n" for s in ordered if s.split == "val"))  # fmt: skip
