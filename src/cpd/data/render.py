"""What a synthetic video looks like: its spec, glyphs, textured backgrounds, frames, mp4.

:mod:`cpd.data.synthetic` decides *which* videos the dataset holds (and draws their random
parameters); this module turns one :class:`VideoSpec` into frames and an mp4. It has no
randomness of its own: every function is a deterministic function of its arguments (the
cloud texture seeds its own generator from the spec). Coordinates are in
pixels with x to the right and y *down*, so a positive angle turns a glyph clockwise on screen.

Glyphs are drawn from signed distance fields (negative inside), tabulated once per shape on a
grid over the canonical square [-EXTENT, EXTENT]^2 (glyph circumradius about 1) and sampled
bilinearly, which gives anti-aliased edges and an outline at any scale and angle for the cost of
one table lookup per pixel of the glyph's bounding box.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path

import numpy as np

SHAPES: tuple[str, ...] = ("square", "triangle", "star", "cross", "heart", "crescent")
BACKGROUNDS: tuple[str, ...] = ("stripes", "checkerboard", "dots", "clouds", "gradient", "grid")

EXTENT = 1.3  # half-width of the canonical square the SDF tables cover
_TABLE = 257  # SDF table resolution (samples per side)


# unit direction (x right, y down) of each translation
DIRECTIONS = {
    "MovingLeft": (-1, 0),
    "MovingRight": (1, 0),
    "MovingUp": (0, -1),
    "MovingDown": (0, 1),
}


@dataclass(frozen=True)
class Appearance:
    """What all videos of one appearance group share."""

    group: int
    colour: str
    rgb: tuple[float, float, float]
    shape: str
    background: str
    bg_colours: tuple[tuple[float, float, float], tuple[float, float, float]]
    bg_angle: float
    bg_period: float
    bg_seed: int
    radius: float  # glyph circumradius as a fraction of the short side


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render one video; :func:`render_video` is a pure function of it."""

    index: int
    name: str  # "v_<Motion>_g<GG>_c<CC>"
    motion: str
    clip: int
    split: str
    look: Appearance
    width: int
    height: int
    num_frames: int
    fps: float
    radius: float  # pixels, at the middle of the video
    centre: tuple[float, float]  # pixels, the path's midpoint (translations) or the position
    speed: float  # pixels per second along the motion direction (translations)
    angle0: float  # degrees, orientation at the middle of the video
    omega: float  # degrees per second, clockwise on screen (rotations)
    growth: float  # log-size per second (Growing > 0, Shrinking < 0)
    wobble: tuple[float, float, float]  # smooth speed variation: (relative amplitude, Hz, phase)
    jitter: tuple[float, float, float, float]  # positional jitter: (pixels, Hz, phase x, phase y)

    @property
    def path(self) -> str:
        """The video's path relative to the dataset root."""
        return f"videos/{self.motion}/{self.name}.mp4"


# --- signed distance fields in canonical coordinates ------------------------------------


def _sd_box(x: np.ndarray, y: np.ndarray, hx: float, hy: float) -> np.ndarray:
    qx, qy = np.abs(x) - hx, np.abs(y) - hy
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


def _sd_polygon(x: np.ndarray, y: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Exact signed distance to a simple polygon (vertices ``[M, 2]``), even-odd inside test."""
    d2 = np.full(x.shape, np.inf)
    inside = np.zeros(x.shape, dtype=bool)
    for i in range(len(verts)):
        ax, ay = verts[i]
        bx, by = verts[i - 1]
        ex, ey = bx - ax, by - ay
        wx, wy = x - ax, y - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        d2 = np.minimum(d2, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        crosses = (ay > y) != (by > y)
        # x of the edge at height y; only used where the edge straddles y, so ey != 0 there
        with np.errstate(divide="ignore", invalid="ignore"):
            x_edge = ax + ex * (y - ay) / ey
        inside ^= crosses & (x < x_edge)
    return np.where(inside, -1.0, 1.0) * np.sqrt(d2)


def _regular(n: int, radii: tuple[float, ...], start_deg: float = -90.0) -> np.ndarray:
    """Vertices at equal angular steps, cycling through ``radii`` (a star for two radii)."""
    k = np.arange(n)
    ang = np.deg2rad(start_deg) + 2 * np.pi * k / n
    r = np.array(radii)[k % len(radii)]
    return np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)


def _heart_vertices(n: int = 96) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    hx = 16 * np.sin(t) ** 3
    hy = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    verts = np.stack([hx, hy], axis=1) / 16.5
    return verts - verts.mean(axis=0)  # centre it so rotation turns it about its middle


def shape_sdf(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact signed distance (canonical units, negative inside) of glyph ``shape`` at (x, y)."""
    if shape == "square":
        return _sd_box(x, y, 0.72, 0.72)
    if shape == "triangle":
        return _sd_polygon(x, y, _regular(3, (1.0,)) + [0.0, 0.2])
    if shape == "star":
        return _sd_polygon(x, y, _regular(10, (1.05, 0.45)))
    if shape == "cross":
        return np.minimum(_sd_box(x, y, 0.95, 0.3), _sd_box(x, y, 0.3, 0.95))
    if shape == "heart":
        return _sd_polygon(x, y, _heart_vertices())
    if shape == "crescent":
        # a disc minus an offset disc: opens to the right, so its mass sits left of centre
        outer = np.hypot(x, y) - 1.0
        bite = np.hypot(x - 0.45, y + 0.1) - 0.8
        return np.maximum(outer, -bite)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


@cache
def _sdf_table(shape: str) -> np.ndarray:
    axis = np.linspace(-EXTENT, EXTENT, _TABLE)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    table = shape_sdf(shape, x, y).astype(np.float32)
    table.setflags(write=False)
    return table


def _sample_table(table: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a canonical SDF table; far outside the table counts as 'outside'."""
    scale = (_TABLE - 1) / (2 * EXTENT)
    fu = np.clip((u + EXTENT) * scale, 0, _TABLE - 1.001)
    fv = np.clip((v + EXTENT) * scale, 0, _TABLE - 1.001)
    iu, iv = fu.astype(np.int64), fv.astype(np.int64)
    au, av = fu - iu, fv - iv
    top = table[iv, iu] * (1 - au) + table[iv, iu + 1] * au
    bottom = table[iv + 1, iu] * (1 - au) + table[iv + 1, iu + 1] * au
    d = top * (1 - av) + bottom * av
    # outside the table the clamped lookup underestimates distance; the edge value is > 0 anyway
    beyond = np.maximum(np.abs(u), np.abs(v)) - EXTENT
    return np.where(beyond > 0, np.maximum(d, beyond), d)


# --- glyph composition ------------------------------------------------------------------


def draw_glyph(
    canvas: np.ndarray,
    shape: str,
    rgb: tuple[float, float, float],
    cx: float,
    cy: float,
    radius: float,
    angle_deg: float,
    outline: float = 1.2,
) -> np.ndarray:
    """Composite a glyph onto ``canvas`` (float ``[H, W, 3]`` in [0, 1]) in place.

    The glyph is centred at pixel (cx, cy), has circumradius ``radius`` pixels and is turned
    ``angle_deg`` clockwise on screen; it gets a darker outline ``outline`` pixels wide so it
    stands out on any background. Returns the glyph's coverage (alpha) ``[H, W]`` float32.
    """
    h, w, _ = canvas.shape
    alpha_full = np.zeros((h, w), dtype=np.float32)
    reach = radius * EXTENT + 2.0
    x0, x1 = max(int(np.floor(cx - reach)), 0), min(int(np.ceil(cx + reach)) + 1, w)
    y0, y1 = max(int(np.floor(cy - reach)), 0), min(int(np.ceil(cy + reach)) + 1, h)
    if x0 >= x1 or y0 >= y1 or radius <= 0:
        return alpha_full
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    # pixel centres into canonical coordinates: inverse rotation, then divide by the scale
    a = np.deg2rad(angle_deg)
    dx, dy = xs + 0.5 - cx, ys + 0.5 - cy
    u = (np.cos(a) * dx + np.sin(a) * dy) / radius
    v = (-np.sin(a) * dx + np.cos(a) * dy) / radius
    d = _sample_table(_sdf_table(shape), u, v) * radius  # back to pixels
    alpha = np.clip(0.5 - d, 0.0, 1.0)
    fill = np.clip(0.5 - (d + outline), 0.0, 1.0)
    colour = np.asarray(rgb, dtype=np.float32)
    region = canvas[y0:y1, x0:x1]
    edge = (alpha - fill)[..., None]
    region[:] = region * (1 - alpha[..., None]) + (0.4 * colour) * edge + colour * fill[..., None]
    alpha_full[y0:y1, x0:x1] = alpha
    return alpha_full


# --- backgrounds --------------------------------------------------------------------------


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Smooth (bilinear) upsampling of a coarse noise grid to ``[h, w]``."""
    gy = np.linspace(0, grid.shape[0] - 1.001, h)
    gx = np.linspace(0, grid.shape[1] - 1.001, w)
    iy, ix = gy.astype(int), gx.astype(int)
    fy, fx = (gy - iy)[:, None], (gx - ix)[None, :]
    # smoothstep weights hide the grid's creases
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    a, b = grid[iy][:, ix], grid[iy][:, ix + 1]
    c, d = grid[iy + 1][:, ix], grid[iy + 1][:, ix + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def render_background(
    kind: str,
    width: int,
    height: int,
    colours: tuple[tuple[float, float, float], tuple[float, float, float]],
    angle_deg: float,
    period: float,
    noise_seed: int,
) -> np.ndarray:
    """A static textured background, float32 ``[H, W, 3]`` in [0, 1].

    ``kind`` is one of ``BACKGROUNDS``; the texture blends ``colours[0]`` and ``colours[1]``
    along a pattern turned by ``angle_deg`` with a spatial ``period`` in pixels (``clouds``
    draws its noise from ``noise_seed``).
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    a = np.deg2rad(angle_deg)
    u = np.cos(a) * xs + np.sin(a) * ys
    v = -np.sin(a) * xs + np.cos(a) * ys
    if kind == "stripes":
        m = 0.5 + 0.5 * np.tanh(3.0 * np.sin(2 * np.pi * u / period))
    elif kind == "checkerboard":
        m = 0.5 + 0.5 * np.tanh(4.0 * np.sin(np.pi * u / period) * np.sin(np.pi * v / period))
    elif kind == "dots":
        fu, fv = (u / period) % 1.0 - 0.5, (v / period) % 1.0 - 0.5
        m = np.clip(0.28 * period - np.hypot(fu, fv) * period + 0.5, 0.0, 1.0)
    elif kind == "clouds":
        rng = np.random.default_rng(noise_seed)
        m = np.zeros((height, width), dtype=np.float64)
        for octave, weight in ((period, 0.6), (period / 2, 0.3), (period / 4, 0.1)):
            cells = (int(height / octave) + 2, int(width / octave) + 2)
            m += weight * _upsample(rng.random(cells), height, width)
        m = np.clip((m - m.min()) / max(float(np.ptp(m)), 1e-6), 0.0, 1.0)
    elif kind == "gradient":
        span = abs(np.cos(a)) * width + abs(np.sin(a)) * height
        m = np.clip((u - u.min()) / max(span, 1.0), 0.0, 1.0)
    elif kind == "grid":
        fu, fv = (u / period) % 1.0, (v / period) % 1.0
        dist = np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv)) * period
        m = np.clip(1.5 - dist, 0.0, 1.0)
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    c0, c1 = (np.asarray(c, dtype=np.float32) for c in colours)
    return (c0 * (1 - m[..., None]) + c1 * m[..., None]).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] to uint8 with rounding."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# --- videos --------------------------------------------------------------------------


def object_track(spec: VideoSpec) -> dict[str, np.ndarray]:
    """Per-frame glyph pose: ``x``, ``y`` (pixels), ``radius`` (pixels), ``angle`` (degrees cw)."""
    t = np.arange(spec.num_frames, dtype=np.float64) / spec.fps
    t -= t[-1] / 2  # time from the middle of the video, so ``centre`` is the path's midpoint
    amp, freq, phase = spec.wobble
    w = 2 * math.pi * freq
    # integral of a speed 1 + amp*cos(w t + phase): strictly increasing for amp < 1
    progress = t + amp / w * np.sin(w * t + phase)
    dx, dy = DIRECTIONS.get(spec.motion, (0, 0))
    jit, jfreq, jpx, jpy = spec.jitter
    wj = 2 * math.pi * jfreq * t
    x = spec.centre[0] + dx * spec.speed * progress + jit * np.sin(wj + jpx)
    y = spec.centre[1] + dy * spec.speed * progress + jit * np.sin(1.3 * wj + jpy)
    angle = spec.angle0 + spec.omega * progress + 2.0 * np.sin(wj + jpy)
    radius = spec.radius * np.exp(spec.growth * t)
    return {"x": x, "y": y, "radius": radius, "angle": angle}


def render_video(
    spec: VideoSpec, *, with_alpha: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Render a video's frames as uint8 ``[T, H, W, 3]`` (and the glyph's coverage ``[T, H, W]``)."""
    look = spec.look
    bg = render_background(look.background, spec.width, spec.height, look.bg_colours,
                           look.bg_angle, look.bg_period, look.bg_seed)  # fmt: skip
    track = object_track(spec)
    frames = np.empty((spec.num_frames, spec.height, spec.width, 3), dtype=np.uint8)
    alphas = np.empty((spec.num_frames, spec.height, spec.width), dtype=np.float32)
    for i in range(spec.num_frames):
        canvas = bg.copy()
        alphas[i] = draw_glyph(canvas, look.shape, look.rgb, track["x"][i], track["y"][i],
                               track["radius"][i], track["angle"][i])  # fmt: skip
        frames[i] = to_uint8(canvas)
    return (frames, alphas) if with_alpha else frames


# --- encoding ------------------------------------------------------------------------------


def encode_mp4(path: str | Path, frames: np.ndarray, fps: float, crf: int = 20) -> None:
    """Write uint8 frames ``[T, H, W, 3]`` as H.264 (yuv420p) mp4; a temp file, then a rename."""
    import av  # only the writers need PyAV

    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # one thread: the pool already keeps every core busy; a 1 s GOP keeps seeks cheap
        stream.codec_context.thread_count = 1
        stream.options = {"crf": str(crf), "g": str(max(1, round(fps))), "preset": "medium"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
