"""Spatial transforms on uint8 frames ``[T, H, W, 3]``: pure functions, explicit generator.

The training path draws, in this order and from one ``torch.Generator``: the short-side scale,
the crop position, the flip. :func:`cpd.load_clip` draws the window start first, then the
scale (the decoder resizes to it during RGB conversion), then calls :func:`crop_flip_normalize`.
A dataset that caches decoded uint8 frames calls :func:`train_transform`, which makes the same
draws in the same order and resizes with torch instead of swscale; everything after the resize
is the same code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)


def make_generator(seed: int | None = None) -> torch.Generator:
    """A CPU generator seeded with ``seed``, or from fresh OS entropy when ``seed`` is None."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def default_scale_range(crop_size: int) -> tuple[int, int]:
    """Short-side jitter range for a crop size: [128, 170] for 112, [256, 340] for 224.

    Other sizes scale the same ratios (8/7 and 85/56 of the crop size).
    """
    return round(crop_size * 8 / 7), round(crop_size * 85 / 56)


def draw_scale(generator: torch.Generator, scale_range: tuple[int, int]) -> int:
    """A short-side size drawn uniformly from the integers in ``scale_range`` (inclusive)."""
    lo, hi = scale_range
    if lo > hi:
        raise ValueError(f"scale range must be (min, max), got {scale_range}")
    return int(torch.randint(lo, hi + 1, (1,), generator=generator).item())


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """``(height, width)`` with the short side ``short`` and the aspect ratio kept (floored)."""
    if height <= width:
        return short, max(short, int(math.floor(width * short / height)))
    return max(short, int(math.floor(height * short / width))), short


def resize_short_side(frames: torch.Tensor, short: int) -> torch.Tensor:
    """Resize uint8 ``[T, H, W, 3]`` frames so the short side is ``short`` (bilinear)."""
    t, h, w, _ = frames.shape
    size = short_side_size(h, w, short)
    if size == (h, w):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def uniform_crop_offsets(
    height: int, width: int, size: int, num_crops: int
) -> list[tuple[int, int]]:
    """``(top, left)`` of ``num_crops`` crops spread along the long side.

    One crop is the centre; three are left/centre/right (landscape) or top/centre/bottom
    (portrait), as in the official multi-view test.
    """
    if height < size or width < size:
        raise ValueError(f"frames {height}x{width} are smaller than the crop {size}")
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    centre = (math.ceil((height - size) / 2), math.ceil((width - size) / 2))
    if num_crops == 1:
        return [centre]
    offsets = []
    for j in range(num_crops):
        if height > width:
            offsets.append((math.ceil(j * (height - size) / (num_crops - 1)), centre[1]))
        else:
            offsets.append((centre[0], math.ceil(j * (width - size) / (num_crops - 1))))
    return offsets


def normalize(
    frames: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD
) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float32 ``[3, T, H, W]``: ``(x / 255 - mean) / std``."""
    # make the small uint8 tensor contiguous first: float maths on a permuted view is ~3x slower
    x = frames.permute(3, 0, 1, 2).contiguous().to(torch.float32)
    m = torch.tensor(mean, dtype=torch.float32).mul_(255).view(3, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).mul_(255).view(3, 1, 1, 1)
    return x.sub_(m).div_(s)


def crop_flip_normalize(
    frames: torch.Tensor,
    crop_size: int,
    generator: torch.Generator | None = None,
    *,
    hflip: float = 0.5,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> torch.Tensor:
    """Crop, maybe flip, and normalise uint8 ``[T, H, W, 3]`` to float ``[3, T, S, S]``.

    With a generator: a random crop (two draws) then a horizontal flip with probability
    ``hflip`` (one draw). Without one: the centre crop, no flip.
    """
    _, h, w, _ = frames.shape
    if h < crop_size or w < crop_size:
        raise ValueError(f"frames {h}x{w} are smaller than the crop {crop_size}")
    if generator is None:
        top, left = uniform_crop_offsets(h, w, crop_size, 1)[0]
        flip = False
    else:
        top = int(torch.randint(0, h - crop_size + 1, (1,), generator=generator).item())
        left = int(torch.randint(0, w - crop_size + 1, (1,), generator=generator).item())
        flip = bool(torch.rand((1,), generator=generator).item() < hflip)
    out = frames[:, top : top + crop_size, left : left + crop_size]
    if flip:
        out = out.flip(2)
    return normalize(out, mean, std)


def train_transform(
    frames: torch.Tensor,
    crop_size: int,
    generator: torch.Generator,
    *,
    scale_range: tuple[int, int] | None = None,
    hflip: float = 0.5,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> torch.Tensor:
    """The training augmentation for cached uint8 frames ``[T, H, W, 3]`` -> ``[3, T, S, S]``:
    short-side scale jitter, random crop, flip, normalise (the draws of :func:`cpd.load_clip`)."""
    scale = draw_scale(generator, scale_range or default_scale_range(crop_size))
    frames = resize_short_side(frames, scale)
    return crop_flip_normalize(frames, crop_size, generator, hflip=hflip, mean=mean, std=std)


def spatial_views(
    frames: torch.Tensor,
    crop_size: int,
    num_crops: int,
    *,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> list[torch.Tensor]:
    """The ``num_crops`` spatial test views of uint8 frames already resized to the crop size."""
    _, h, w, _ = frames.shape
    views = []
    for top, left in uniform_crop_offsets(h, w, crop_size, num_crops):
        views.append(
            normalize(frames[:, top : top + crop_size, left : left + crop_size], mean, std)
        )
    return views
