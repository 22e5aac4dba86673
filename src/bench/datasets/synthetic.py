"""The embedded default dataset: procedural industrial images with pixel-exact defect masks.

``generate(root, seed)`` writes an MVTec-layout tree (DESIGN.md section 10)::

    <root>/synthetic.json, <root>/README.txt
    <root>/<cat>/train/good/000.png ...
    <root>/<cat>/test/good/000.png ...,  <root>/<cat>/test/<defect>/000.png ...
    <root>/<cat>/ground_truth/<defect>/000_mask.png   (0/255)

Everything is drawn by this file with numpy/scipy (signed-distance shapes, filtered noise); there
are no third-party images and no network. Six categories: three textures (``fabric``: plain
weave, ``wood``: grain and rings, ``tile``: tiles and grout) and three objects (``nut``: a hex nut
seen from above, ``pill``: a two-colour capsule, ``pcb``: a board with an IC, resistors,
capacitors, traces and vias). Normal images vary: colour jitter, shift/rotation of the object or
pattern phase, noise, a lighting gradient.

About one third of the test images are anomalous, spread over the category's defect types:
scratch (thin curved line), crack (branching dark polyline), hole (dark disk with a lighter rim),
stain (soft-edged tinted blob), missing_part (object pixels replaced by the background; on the
board a component removed), misplaced_part (a component shifted/rotated), colour (hue shift and
tint of a region), contamination (a cluster of small foreign particles). A defect is an alpha map
``a`` and a target image ``T``; the image is ``clean·(1−a) + T·a`` with ``a`` cut to 0 below
``ALPHA_CUT``, so the mask ``a > 0`` covers exactly the pixels that changed (lighting and sensor
noise are applied afterwards, identically to the clean image).

This generator is deliberately independent of PGT's training-time anomaly synthesis
(``bench/synth.py``: Perlin-shaped masks, textures, cut-paste): only geometric primitives,
polylines and harmonic blobs are used here, so no refiner can score well by learning this recipe.

Every image's pixels depend only on (seed, category, split, index, size): generating a subset of
the categories gives the same images for those categories.
"""
from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from bench.errors import ConfigError, DatasetError
from bench.registry import DATASETS

from .folder import FolderDataset

GENERATOR = "bench.datasets.synthetic"
GENERATOR_VERSION = 1
MARKER = "synthetic.json"
STAGING = ".incomplete"
DETECT_SCORE = 1000
ALPHA_CUT = 0.15  # defect alpha below this is dropped: changed pixels == mask pixels
MIN_MASK_FRACTION = 4e-4  # smallest defect area, as a fraction of the image (retry below it)

TEXTURES = ("fabric", "wood", "tile")
OBJECTS = ("nut", "pill", "pcb")
CATEGORIES = TEXTURES + OBJECTS
DEFECTS: dict[str, tuple[str, ...]] = {
    "fabric": ("hole", "stain", "colour", "contamination"),
    "wood": ("scratch", "crack", "hole", "stain"),
    "tile": ("crack", "stain", "contamination"),
    "nut": ("scratch", "colour", "missing_part", "contamination"),
    "pill": ("crack", "colour", "missing_part", "contamination"),
    "pcb": ("missing_part", "misplaced_part", "scratch", "contamination"),
}


# --------------------------------------------------------------------------- primitives


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy + 0.5, xx + 0.5


def _window(size: int, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice] | None:
    r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)) + 1, size)
    c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)) + 1, size)
    if r0 >= r1 or c0 >= c1:
        return None
    return slice(r0, r1), slice(c0, c1)


def _aa(sdf: np.ndarray, soft: float = 1.0) -> np.ndarray:
    """Coverage of a shape from its signed distance (negative inside), anti-aliased over ``soft`` px."""
    return np.clip(0.5 - sdf / soft, 0.0, 1.0).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean()
    return (x / (x.std() + 1e-6)).astype(np.float32)


@lru_cache(maxsize=32)
def _bspline_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells + 3) weights that sample a cubic B-spline through a (cells + 3) control grid."""
    t = (np.arange(size) + 0.5) / size * cells + 1.0  # control points 0 .. cells + 2
    d = np.abs(t[:, None] - np.arange(cells + 3)[None, :])
    w = np.where(d < 1, 2 / 3 - d**2 + d**3 / 2, np.where(d < 2, (2 - d) ** 3 / 6, 0.0))
    return w.astype(np.float32)


@lru_cache(maxsize=32)
def _bspline_matrix_t(size: int, cells: int) -> np.ndarray:
    # contiguous: a transposed view hits a slow OpenBLAS path for some shapes (10x slower)
    return np.ascontiguousarray(_bspline_matrix(size, cells).T)


def _lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth zero-mean, unit-std noise with about ``cells`` blobs across the image (B-spline)."""
    base = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    w = _bspline_matrix(size, cells)
    return _normalise((w @ base) @ _bspline_matrix_t(size, cells))


def _fine(rng: np.random.Generator, size: int, sigma: float, channels: int = 0) -> np.ndarray:
    shape = (size, size, channels) if channels else (size, size)
    n = rng.standard_normal(shape).astype(np.float32)
    sig = (sigma, sigma, 0) if channels else sigma
    return _normalise(gaussian_filter(n, sig, mode="wrap"))


def _jitter(rng: np.random.Generator, colour: tuple[float, float, float], amount: float = 0.04) -> np.ndarray:
    c = np.asarray(colour, np.float32)
    return np.clip(c * (1 + rng.normal(0, amount, 3)) * (1 + rng.normal(0, amount)), 0, 1).astype(np.float32)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of colours/images a → b by t (H×W)."""
    return a + (b - a) * t[..., None]


def _segments_distance(points: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    d = np.full(yy.shape, np.inf, np.float32)
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:]):
        dx, dy = bx - ax, by - ay
        ll = dx * dx + dy * dy
        t = np.clip(((xx - ax) * dx + (yy - ay) * dy) / ll, 0, 1) if ll > 1e-9 else np.zeros_like(xx)
        d = np.minimum(d, np.hypot(xx - ax - t * dx, yy - ay - t * dy))
    return d


def _polyline(size: int, points: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased coverage of a polyline of ``width`` px through (x, y) ``points``."""
    out = np.zeros((size, size), np.float32)
    pad = width / 2 + 2
    win = _window(size, points[:, 0].min() - pad, points[:, 1].min() - pad,
                  points[:, 0].max() + pad, points[:, 1].max() + pad)
    if win is None:
        return out
    yy, xx = _grid(size)
    d = _segments_distance(points, yy[win], xx[win])
    out[win] = _aa(d - width / 2)
    return out


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _blob(size: int, rng: np.random.Generator, centre: np.ndarray, radius: float, soft: float = 1.0,
          roughness: float = 0.18) -> np.ndarray:
    """Coverage of an irregular disk: radius modulated by a few angular harmonics."""
    out = np.zeros((size, size), np.float32)
    reach = radius * (1 + 3 * roughness) + soft + 2
    win = _window(size, centre[0] - reach, centre[1] - reach, centre[0] + reach, centre[1] + reach)
    if win is None:
        return out
    yy, xx = _grid(size)
    dx, dy = xx[win] - centre[0], yy[win] - centre[1]
    phi = np.arctan2(dy, dx)
    r = np.ones_like(phi)
    for k in (2, 3, 5):
        r += rng.uniform(0, roughness) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    out[win] = _aa(np.hypot(dx, dy) - radius * r, soft)
    return out


def _rect_sdf(u: np.ndarray, v: np.ndarray, hw: float, hh: float, radius: float = 0.0) -> np.ndarray:
    qx, qy = np.abs(u) - hw + radius, np.abs(v) - hh + radius
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - radius


def _hue_rotate(img: np.ndarray, angle: float) -> np.ndarray:
    """Rotate hue by ``angle`` radians (YIQ rotation; keeps luma)."""
    c, s = np.cos(angle), np.sin(angle)
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)
    m = np.linalg.inv(to_yiq) @ rot @ to_yiq
    return img @ m.T.astype(np.float32)


def _sample_point(rng: np.random.Generator, support: np.ndarray) -> np.ndarray:
    """(x, y) of a random pixel where ``support`` is True."""
    idx = np.flatnonzero(support)
    k = idx[rng.integers(len(idx))]
    size = support.shape[1]
    return np.array([k % size + 0.5, k // size + 0.5], np.float32)


# --------------------------------------------------------------------------- scenes


@dataclass
class Scene:
    """A clean rendering (float32 H×W×3 in [0, 1], before lighting and noise) and what defects need."""

    image: np.ndarray
    support: np.ndarray  # where surface defects may start (bool)
    coverage: np.ndarray  # where surface defects may draw (float: object coverage; 1 for textures)
    background: np.ndarray | None = None  # objects: the scene without the object
    boundary: np.ndarray | None = None  # objects: pixels on the object's outline (bool)
    parts: list = field(default_factory=list)  # pcb: the component list
    redraw: Callable | None = None  # pcb: redraw(parts) → image with a modified component list
    part_coverage: Callable | None = None  # pcb: part_coverage(part) → its coverage


def _texture_scene(size: int, image: np.ndarray) -> Scene:
    m = max(2, int(0.08 * size))
    support = np.zeros((size, size), bool)
    support[m:-m, m:-m] = True
    return Scene(np.clip(image, 0, 1).astype(np.float32), support, np.ones((size, size), np.float32))


def _fabric(rng: np.random.Generator, size: int) -> Scene:
    yy, xx = _grid(size)
    s = size / 256
    period = rng.uniform(9.0, 10.5) * s
    ang = np.deg2rad(rng.uniform(-2.5, 2.5))
    c, si = np.cos(ang), np.sin(ang)
    u = (xx * c + yy * si) / period + rng.uniform(0, 2)
    v = (-xx * si + yy * c) / period + rng.uniform(0, 2)
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    warp_on_top = ((iu + iv) % 2) == 0
    thread_u = np.sqrt(np.sin(np.pi * fu))
    thread_v = np.sqrt(np.sin(np.pi * fv))
    height = np.where(warp_on_top, thread_u * (0.7 + 0.3 * np.sin(np.pi * fv)),
                      thread_v * (0.7 + 0.3 * np.sin(np.pi * fu)))
    lut = rng.normal(0, 0.05, 64).astype(np.float32)  # per-thread brightness
    thread_tone = np.where(warp_on_top, lut[iu.astype(np.int64) % 64], lut[(iv.astype(np.int64) + 32) % 64])
    fibres = _fine(rng, size, 0.7)
    shade = 0.5 + 0.5 * height + thread_tone + 0.04 * fibres + 0.03 * _lowfreq(rng, size, 4)
    warp_col = _jitter(rng, (0.26, 0.36, 0.56))
    weft_col = _jitter(rng, (0.62, 0.64, 0.68))
    colour = np.where(warp_on_top[..., None], warp_col, weft_col)
    return _texture_scene(size, colour * shade[..., None])


def _wood(rng: np.random.Generator, size: int) -> Scene:
    yy, xx = _grid(size)
    s = size / 256
    ang = np.deg2rad(rng.uniform(-4, 4))
    v = -xx * np.sin(ang) + yy * np.cos(ang)
    period = rng.uniform(13, 18) * s
    t = (v + 14 * s * _lowfreq(rng, size, 3) + 4 * s * _lowfreq(rng, size, 7)) / period + rng.uniform(0, 1)
    rings = (0.5 + 0.5 * np.cos(2 * np.pi * t)) ** 3
    streak_noise = rng.standard_normal((size, size)).astype(np.float32)
    streaks = _normalise(gaussian_filter(streak_noise, (0.6 * max(s, 0.5), 9 * s), mode="wrap"))
    tone = np.clip(0.55 + 0.3 * rings + 0.06 * streaks + 0.05 * _fine(rng, size, 1.0), 0, 1)
    light = _jitter(rng, (0.80, 0.60, 0.40))
    dark = _jitter(rng, (0.52, 0.33, 0.19))
    return _texture_scene(size, _mix(light[None, None], dark[None, None], tone))


def _tile(rng: np.random.Generator, size: int) -> Scene:
    yy, xx = _grid(size)
    s = size / 256
    pitch = rng.uniform(60, 68) * s
    ang = np.deg2rad(rng.uniform(-1.0, 1.0))
    u = (xx * np.cos(ang) + yy * np.sin(ang)) + rng.uniform(0, pitch)
    v = (-xx * np.sin(ang) + yy * np.cos(ang)) + rng.uniform(0, pitch)
    iu, iv = np.floor(u / pitch), np.floor(v / pitch)
    fu, fv = u - iu * pitch, v - iv * pitch
    edge = np.minimum(np.minimum(fu, pitch - fu), np.minimum(fv, pitch - fv))
    grout_half = max(1.6 * s, 0.8)
    tile_alpha = _aa(grout_half - edge, 1.0)
    lut = rng.normal(0, 0.035, 97).astype(np.float32)
    tone = lut[(iu.astype(np.int64) * 7 + iv.astype(np.int64) * 13) % 97]
    bevel = np.clip(1 - (edge - grout_half) / (3 * s + 1), 0, 1)
    bevel_shade = bevel * 0.08 * np.sign(np.where(np.minimum(fu, fv) < np.minimum(pitch - fu, pitch - fv), 1, -1))
    surface = 1 + tone + 0.05 * _fine(rng, size, 0.9) + 0.04 * _lowfreq(rng, size, 5) + bevel_shade
    tile_col = _jitter(rng, (0.78, 0.76, 0.71))
    grout_col = _jitter(rng, (0.42, 0.41, 0.39))
    grout = grout_col * (1 + 0.06 * _fine(rng, size, 0.8))[..., None]
    img = _mix(grout, tile_col * surface[..., None], tile_alpha)
    return _texture_scene(size, img)


def _object_scene(image: np.ndarray, background: np.ndarray, coverage: np.ndarray, support: np.ndarray) -> Scene:
    boundary = (coverage > 0.25) & (coverage < 0.75)
    return Scene(np.clip(image, 0, 1).astype(np.float32), support, coverage, np.clip(background, 0, 1), boundary)


def _nut(rng: np.random.Generator, size: int) -> Scene:
    yy, xx = _grid(size)
    s = size / 256
    bg_col = _jitter(rng, (0.16, 0.17, 0.19))
    background = bg_col * (1 + 0.10 * _lowfreq(rng, size, 3) + 0.05 * _fine(rng, size, 1.0))[..., None]
    cx, cy = size / 2 + rng.uniform(-0.03, 0.03, 2) * size
    theta = rng.uniform(0, np.pi / 3)
    dx, dy = xx - cx, yy - cy
    r = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx)
    apothem = 0.33 * size * rng.uniform(0.98, 1.02)
    # regular hexagon: distance along the nearest face normal
    sector = np.round((phi - theta) / (np.pi / 3)) * (np.pi / 3) + theta
    hex_d = r * np.cos(phi - sector) - apothem
    outer = np.maximum(hex_d, r - apothem * 1.1)  # chamfered corners
    hole_r = 0.14 * size
    coverage = _aa(outer) * _aa(hole_r - r)
    metal = _jitter(rng, (0.66, 0.66, 0.64), 0.03)
    light_dir = rng.uniform(0, 2 * np.pi)
    shade = (0.85 + 0.10 * np.cos(phi - light_dir) + 0.03 * np.sin(2 * np.pi * r / (3.2 * s + 0.5))
             + 0.04 * _fine(rng, size, 0.8) + 0.03 * _lowfreq(rng, size, 6))
    edge_band = np.clip(1 - (-outer) / (5 * s + 1), 0, 1)  # outer bevel darker
    inner_band = np.clip(1 - (r - hole_r) / (0.06 * size), 0, 1)  # chamfer around the hole brighter
    shade = shade - 0.22 * edge_band + 0.12 * inner_band * (0.5 + 0.5 * np.cos(phi - light_dir))
    obj = metal * shade[..., None]
    hole_col = bg_col * 0.6 * (1 + 0.15 * np.sin(2 * np.pi * r / (4 * s + 0.5)))[..., None]
    in_hole = _aa(r - hole_r)
    scene_bg = _mix(background, hole_col, in_hole)  # the hole shows a dark threaded bore
    image = _mix(scene_bg, obj, coverage)
    support = (coverage > 0.99) & (outer < -4 * s) & (r > hole_r + 4 * s)
    return _object_scene(image, scene_bg, coverage, support)


def _pill(rng: np.random.Generator, size: int) -> Scene:
    yy, xx = _grid(size)
    s = size / 256
    bg_col = _jitter(rng, (0.86, 0.86, 0.84), 0.02)
    cx, cy = size / 2 + rng.uniform(-0.03, 0.03, 2) * size
    ang = np.deg2rad(rng.uniform(-6, 6))
    u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
    v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
    half_len = 0.31 * size * rng.uniform(0.98, 1.02)
    rad = 0.16 * size * rng.uniform(0.98, 1.02)
    sdf = np.hypot(np.maximum(np.abs(u) - (half_len - rad), 0), v) - rad
    shadow = np.clip(1 - (sdf - 3 * s) / (10 * s + 1), 0, 1) * 0.12
    background = bg_col * (1 - shadow + 0.03 * _lowfreq(rng, size, 3) + 0.015 * _fine(rng, size, 1.0))[..., None]
    coverage = _aa(sdf)
    cap = _jitter(rng, (0.78, 0.22, 0.18))
    body = _jitter(rng, (0.93, 0.90, 0.80), 0.02)
    seam = rng.uniform(-0.04, 0.04) * half_len
    colour = _mix(cap[None, None], body[None, None], _aa(seam - u))
    n = np.clip(v / rad, -1, 1)
    shade = 0.72 + 0.28 * np.sqrt(1 - n * n) + 0.02 * _fine(rng, size, 1.0)
    seam_line = np.exp(-((u - seam) / (1.2 * s + 0.3)) ** 2) * 0.18
    highlight = np.exp(-((n + 0.45) / 0.12) ** 2) * 0.22
    obj = colour * (shade - seam_line)[..., None] + highlight[..., None]
    image = _mix(background, obj, coverage)
    support = sdf < -3 * s
    return _object_scene(image, background, coverage, support)


IC_PINS = 7  # per long side


def _pin_rows(u: np.ndarray, p: "Part") -> np.ndarray:
    """Fold part-local ``u`` onto one pin pitch, so one rectangle draws a row of IC_PINS pins."""
    pitch = p.w / IC_PINS
    folded = np.mod(u + p.w / 2, pitch) - pitch / 2
    return np.where(np.abs(u) < p.w / 2, folded, np.float32(1.0)).astype(np.float32)


@dataclass(frozen=True)
class Part:
    """A pcb component in board units (fractions of the image size); ``kind`` picks its drawing."""

    kind: str
    x: float
    y: float
    w: float
    h: float
    angle: float = 0.0  # radians, added to the board's rotation

    def moved(self, dx: float, dy: float, dangle: float) -> "Part":
        return Part(self.kind, self.x + dx, self.y + dy, self.w, self.h, self.angle + dangle)


PCB_PARTS = (
    Part("ic", 0.36, 0.38, 0.28, 0.15),
    Part("resistor", 0.74, 0.20, 0.12, 0.04),
    Part("resistor", 0.74, 0.31, 0.12, 0.04),
    Part("resistor", 0.78, 0.70, 0.12, 0.04, np.pi / 2),
    Part("capacitor", 0.24, 0.75, 0.12, 0.12),
    Part("ceramic", 0.55, 0.66, 0.06, 0.035),
    Part("ceramic", 0.55, 0.78, 0.06, 0.035),
    Part("led", 0.86, 0.45, 0.05, 0.05),
)
PCB_TRACES = (
    ((0.30, 0.47), (0.30, 0.60), (0.52, 0.60), (0.52, 0.66)),
    ((0.42, 0.47), (0.42, 0.55), (0.62, 0.55), (0.62, 0.78), (0.58, 0.78)),
    ((0.48, 0.30), (0.48, 0.20), (0.68, 0.20)),
    ((0.46, 0.30), (0.46, 0.24), (0.60, 0.24), (0.60, 0.31), (0.68, 0.31)),
    ((0.80, 0.20), (0.92, 0.20), (0.92, 0.45), (0.88, 0.45)),
    ((0.80, 0.31), (0.86, 0.31), (0.86, 0.42)),
    ((0.24, 0.30), (0.24, 0.12), (0.62, 0.12), (0.62, 0.03)),
    ((0.24, 0.69), (0.12, 0.69), (0.12, 0.20), (0.24, 0.20), (0.24, 0.30)),
    ((0.78, 0.64), (0.78, 0.52), (0.86, 0.52), (0.86, 0.48)),
    ((0.78, 0.76), (0.78, 0.90), (0.40, 0.90), (0.30, 0.80)),
    ((0.05, 0.95), (0.20, 0.95), (0.20, 0.82)),
)
PCB_VIAS = ((0.12, 0.20), (0.62, 0.03), (0.92, 0.20), (0.40, 0.90), (0.05, 0.95), (0.62, 0.55), (0.52, 0.60))


def _pcb(rng: np.random.Generator, size: int) -> Scene:
    yy, xx = _grid(size)
    s = size / 256
    ang = np.deg2rad(rng.uniform(-1.5, 1.5))
    ox, oy = rng.uniform(-0.02, 0.02, 2) * size
    ca, sa = np.cos(ang), np.sin(ang)
    # board coordinates (pixels) of every image pixel: rotate about the centre, then shift
    bx = (xx - size / 2) * ca + (yy - size / 2) * sa + size / 2 - ox
    by = -(xx - size / 2) * sa + (yy - size / 2) * ca + size / 2 - oy

    board_col = _jitter(rng, (0.10, 0.40, 0.21), 0.05)
    copper_col = _jitter(rng, (0.20, 0.55, 0.30), 0.04)
    gold = _jitter(rng, (0.82, 0.68, 0.34), 0.03)
    silver = _jitter(rng, (0.78, 0.78, 0.76), 0.02)
    silk = _jitter(rng, (0.92, 0.93, 0.90), 0.02)
    tex = 1 + 0.05 * _fine(rng, size, 0.8) + 0.04 * _lowfreq(rng, size, 4)
    board = board_col * tex[..., None]

    def board_window(x0: float, y0: float, x1: float, y1: float, pad: float) -> tuple[slice, slice] | None:
        """Image window covering the board rectangle (board pixels), plus ``pad`` pixels."""
        cx = np.array([x0, x1, x0, x1]) - size / 2 + ox
        cy = np.array([y0, y0, y1, y1]) - size / 2 + oy
        ix, iy = cx * ca - cy * sa + size / 2, cx * sa + cy * ca + size / 2
        return _window(size, ix.min() - pad, iy.min() - pad, ix.max() + pad, iy.max() + pad)

    for pts in PCB_TRACES:
        p = np.asarray(pts, np.float32) * size
        win = board_window(*p.min(0), *p.max(0), 4 * s + 2)
        if win is not None:
            cov = _aa(_segments_distance(p, by[win], bx[win]) - 2.2 * s)
            board[win] = _mix(board[win], copper_col * tex[win][..., None], cov)
    for (vx, vy) in PCB_VIAS:
        win = board_window(vx * size, vy * size, vx * size, vy * size, 6 * s + 2)
        if win is not None:
            r = np.hypot(bx[win] - vx * size, by[win] - vy * size)
            board[win] = _mix(board[win], gold[None, None], _aa(r - 4.0 * s))
            board[win] = _mix(board[win], board_col[None, None] * 0.25, _aa(r - 1.8 * s))

    def pads(p: Part) -> list[tuple[float, float, float, float]]:
        """Solder pads of a part, in part-local board units: (x, y, half-w, half-h)."""
        if p.kind == "ic":  # one row per long side; rows are repeated by ``_pin_rows``
            return [(0.0, sgn * (p.h / 2 + 0.025), 0.011, 0.02) for sgn in (-1, 1)]
        if p.kind in ("resistor", "ceramic"):
            return [(sgn * p.w / 2, 0.0, 0.018, p.h / 2 + 0.008) for sgn in (-1, 1)]
        if p.kind == "capacitor":
            return [(sgn * 0.03, p.h / 2 + 0.015, 0.01, 0.01) for sgn in (-1, 1)]
        return [(sgn * p.w / 2, 0.0, 0.01, p.h / 2) for sgn in (-1, 1)]  # led

    def local(p: Part, win: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        gx, gy = bx[win] - p.x * size, by[win] - p.y * size
        c, sn = np.cos(p.angle), np.sin(p.angle)
        return (gx * c + gy * sn) / size, (-gx * sn + gy * c) / size  # part-local, board units

    def part_window(p: Part) -> tuple[slice, slice] | None:
        reach = (0.5 * np.hypot(p.w, p.h) + 0.06) * size
        # the board→image transform is a small rotation + shift: map the part centre to the image
        px, py = p.x * size - size / 2 + ox, p.y * size - size / 2 + oy
        ix = px * ca - py * sa + size / 2
        iy = px * sa + py * ca + size / 2
        return _window(size, ix - reach, iy - reach, ix + reach, iy + reach)

    def draw_pads(img: np.ndarray, p: Part) -> None:
        win = part_window(p)
        if win is None:
            return
        u, v = local(p, win)
        cov = np.zeros(u.shape, np.float32)
        uu = _pin_rows(u, p) if p.kind == "ic" else u
        for (px, py, hw, hh) in pads(p):
            cov = np.maximum(cov, _aa(_rect_sdf(uu - px, v - py, hw, hh) * size))
        img[win] = _mix(img[win], silver[None, None] * 0.95, cov)

    def draw_part(img: np.ndarray | None, p: Part) -> np.ndarray:
        """Draw ``p`` on ``img`` (in place; None: only compute) and return its full-size coverage."""
        full = np.zeros((size, size), np.float32)
        win = part_window(p)
        if win is None:
            return full
        u, v = local(p, win)
        layers: list[tuple[np.ndarray, np.ndarray]] = []  # (coverage, colour image)
        shape = u.shape + (3,)
        if p.kind == "ic":
            body = _aa(_rect_sdf(u, v, p.w / 2, p.h / 2, 0.008) * size)
            pins = np.zeros(u.shape, np.float32)
            uu = _pin_rows(u, p)
            for (px, py, _, _) in pads(p):
                pins = np.maximum(pins, _aa(_rect_sdf(uu - px, v - py * 0.93, 0.006, 0.022) * size))
            layers.append((pins, np.broadcast_to(silver, shape)))
            tone = 0.09 + 0.02 * np.exp(-(((u + p.w * 0.36) ** 2 + (v + p.h * 0.22) ** 2) / 0.0004))
            ic = np.broadcast_to(np.array([1.0, 1.0, 1.05], np.float32), shape) * tone[..., None]
            layers.append((body, ic))
            dot = _aa((np.hypot(u + p.w * 0.38, v + p.h * 0.25) - 0.012) * size)
            layers.append((dot * body, np.broadcast_to(np.float32(0.22), shape)))
        elif p.kind == "resistor":
            caps = _aa(_rect_sdf(u, v, p.w / 2, p.h / 2 * 0.9, 0.006) * size)
            layers.append((caps, np.broadcast_to(silver, shape)))
            body = _aa(_rect_sdf(u, v, p.w * 0.36, p.h / 2, 0.01) * size)
            layers.append((body, np.broadcast_to(np.array([0.72, 0.62, 0.45], np.float32), shape)))
            for k, band in enumerate(((0.55, 0.25, 0.1), (0.1, 0.1, 0.1), (0.75, 0.1, 0.1))):
                bc = _aa(_rect_sdf(u + p.w * (0.2 - 0.13 * k), v, 0.006, p.h / 2) * size) * body
                layers.append((bc, np.broadcast_to(np.array(band, np.float32), shape)))
        elif p.kind == "capacitor":
            r = np.hypot(u, v)
            body = _aa((r - p.w / 2) * size)
            cbody = np.broadcast_to(np.array([0.15, 0.20, 0.45], np.float32), shape) * (
                0.8 + 0.2 * np.clip(1 - r / (p.w / 2), 0, 1))[..., None]
            layers.append((body, cbody))
            stripe = _aa((p.w * 0.22 - u) * size) * body
            layers.append((stripe, np.broadcast_to(np.array([0.70, 0.72, 0.78], np.float32), shape)))
            layers.append((_aa((np.abs(r - p.w * 0.3) - 0.003) * size) * body,
                           np.broadcast_to(np.float32(0.35), shape)))
        elif p.kind == "ceramic":
            caps = _aa(_rect_sdf(u, v, p.w / 2, p.h / 2, 0.004) * size)
            layers.append((caps, np.broadcast_to(silver, shape)))
            body = _aa(_rect_sdf(u, v, p.w * 0.32, p.h / 2, 0.003) * size)
            layers.append((body, np.broadcast_to(np.array([0.62, 0.50, 0.36], np.float32), shape)))
        else:  # led
            body = _aa(_rect_sdf(u, v, p.w / 2, p.h / 2, 0.006) * size)
            layers.append((body, np.broadcast_to(np.array([0.92, 0.90, 0.80], np.float32), shape)))
            lens = _aa((np.hypot(u, v) - p.w * 0.3) * size)
            layers.append((lens, np.broadcast_to(np.array([0.95, 0.80, 0.20], np.float32), shape)))
        cov = np.zeros(u.shape, np.float32)
        for c, _ in layers:
            cov = np.maximum(cov, c)
        full[win] = cov
        if img is not None:
            region = img[win]
            for c, colour in layers:
                region = _mix(region, colour * tex[win][..., None], c)
            img[win] = region
        return full

    def silkscreen(img: np.ndarray, p: Part) -> None:
        win = part_window(p)
        if win is None:
            return
        u, v = local(p, win)
        hw, hh = p.w / 2 + 0.04, p.h / 2 + 0.05
        if p.kind == "capacitor":
            ring = np.abs(np.hypot(u, v) - (p.w / 2 + 0.025))
        else:
            ring = np.abs(_rect_sdf(u, v, hw, hh))
        img[win] = _mix(img[win], silk[None, None], _aa((ring - 0.0035) * size) * 0.85)

    base = board.copy()
    for p in PCB_PARTS:
        silkscreen(base, p)
        draw_pads(base, p)

    def redraw(parts: list[Part]) -> np.ndarray:
        img = base.copy()
        for p in parts:
            draw_part(img, p)
        return img

    image = redraw(list(PCB_PARTS))
    full = np.ones((size, size), np.float32)
    scene = Scene(np.clip(image, 0, 1).astype(np.float32), np.ones((size, size), bool), full)
    m = max(2, int(0.06 * size))
    scene.support[:m] = scene.support[-m:] = False
    scene.support[:, :m] = scene.support[:, -m:] = False
    scene.parts = list(PCB_PARTS)
    scene.redraw = redraw
    scene.part_coverage = lambda p: draw_part(None, p)
    return scene


RENDERERS: dict[str, Callable[[np.random.Generator, int], Scene]] = {
    "fabric": _fabric, "wood": _wood, "tile": _tile, "nut": _nut, "pill": _pill, "pcb": _pcb,
}


# --------------------------------------------------------------------------- defects
# each returns (target image T, alpha a); the caller composites clean·(1−a) + T·a


def _px(size: int, value: float, minimum: float) -> float:
    return max(value * size / 256, minimum)


def _scratch(scene: Scene, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    p0 = _sample_point(rng, scene.support)
    length = rng.uniform(0.10, 0.35) * size
    direction = rng.uniform(0, 2 * np.pi)
    p2 = p0 + length * np.array([np.cos(direction), np.sin(direction)], np.float32)
    bend = rng.uniform(-0.25, 0.25) * length
    p1 = (p0 + p2) / 2 + bend * np.array([-np.sin(direction), np.cos(direction)], np.float32)
    width = _px(size, rng.uniform(1.0, 2.6), 1.2)
    alpha = _polyline(size, _bezier(p0, p1, p2), width) * scene.coverage
    img = scene.image
    if rng.random() < 0.6:  # bright (bare material) or dark groove
        target = img + (1 - img) * rng.uniform(0.35, 0.6)
    else:
        target = img * rng.uniform(0.35, 0.6)
    return target, alpha


def _crack(scene: Scene, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    start = _sample_point(rng, scene.support)
    step = rng.uniform(0.018, 0.03) * size
    heading = rng.uniform(0, 2 * np.pi)
    pts = [start]
    for _ in range(int(rng.integers(6, 20))):
        heading += rng.normal(0, 0.3)
        pts.append(pts[-1] + step * np.array([np.cos(heading), np.sin(heading)], np.float32))
    main = np.asarray(pts, np.float32)
    width = _px(size, rng.uniform(1.0, 2.4), 1.2)
    alpha = _polyline(size, main, width)
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(1, len(main) - 1))
        h = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
        branch = [main[k]]
        for _ in range(int(rng.integers(2, 6))):
            h += rng.normal(0, 0.4)
            branch.append(branch[-1] + step * 0.8 * np.array([np.cos(h), np.sin(h)], np.float32))
        alpha = np.maximum(alpha, _polyline(size, np.asarray(branch, np.float32), max(width * 0.7, 1.2)))
    alpha *= scene.coverage
    return scene.image * rng.uniform(0.25, 0.5), alpha


def _hole(scene: Scene, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    centre = _sample_point(rng, scene.support)
    radius = _px(size, rng.uniform(3.0, 18.0), 1.6)
    rim = _px(size, rng.uniform(1.5, 3.0), 1.0)
    inner = _blob(size, rng, centre, radius, soft=1.0, roughness=0.12)
    outer = _blob(size, np.random.default_rng(int(rng.integers(1 << 31))), centre, radius + rim, 1.0, 0.12)
    outer = np.maximum(outer, inner)
    img = scene.image
    dark = img.mean(axis=2, keepdims=True) * rng.uniform(0.12, 0.3)
    rim_col = img + (1 - img) * rng.uniform(0.2, 0.4)
    target = _mix(rim_col, np.broadcast_to(dark, img.shape), inner)
    return target, outer * scene.coverage


def _stain(scene: Scene, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    centre = _sample_point(rng, scene.support)
    radius = _px(size, rng.uniform(5.0, 36.0), 2.0)
    soft = max(radius * rng.uniform(0.25, 0.5), 1.0)
    strength = rng.uniform(0.45, 0.8)
    alpha = _blob(size, rng, centre, radius, soft=soft, roughness=0.25) * strength * scene.coverage
    tint = np.array(rng.choice([(0.72, 0.60, 0.42), (0.55, 0.50, 0.48), (0.80, 0.72, 0.40), (0.60, 0.45, 0.45)]),
                    np.float32)
    return scene.image * tint * rng.uniform(0.75, 0.95), alpha


def _colour(scene: Scene, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    centre = _sample_point(rng, scene.support)
    radius = _px(size, rng.uniform(6.0, 32.0), 2.0)
    alpha = _blob(size, rng, centre, radius, soft=max(radius * 0.15, 1.0), roughness=0.2) * scene.coverage
    img = scene.image
    target = _hue_rotate(img, rng.choice([-1, 1]) * rng.uniform(0.6, 1.6))
    tint = rng.normal(0, 1, 3).astype(np.float32)
    tint = 0.25 * tint / (np.linalg.norm(tint) + 1e-6)
    return np.clip(target * (1 + tint), 0, 1), alpha


def _contamination(scene: Scene, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    centre = _sample_point(rng, scene.support)
    spread = rng.uniform(0.02, 0.08) * size
    alpha = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(3, 14))):
        c = centre + rng.normal(0, spread, 2).astype(np.float32)
        alpha = np.maximum(alpha, _blob(size, rng, c, _px(size, rng.uniform(1.0, 3.5), 1.0), 1.0, 0.3))
    if rng.random() < 0.5:  # a fibre
        d = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.04, 0.10) * size
        p2 = centre + length * np.array([np.cos(d), np.sin(d)], np.float32)
        p1 = (centre + p2) / 2 + rng.normal(0, 0.3 * length, 2).astype(np.float32)
        alpha = np.maximum(alpha, _polyline(size, _bezier(centre, p1, p2), _px(size, 1.2, 1.2)))
    alpha *= scene.coverage
    colour = np.array(rng.choice([(0.10, 0.08, 0.06), (0.35, 0.22, 0.10), (0.85, 0.85, 0.80),
                                  (0.20, 0.25, 0.45)]), np.float32)
    target = np.broadcast_to(colour * rng.uniform(0.85, 1.15), scene.image.shape)
    return target, alpha


def _missing_part(scene: Scene, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    if scene.redraw is not None:  # a board: one component gone (its pads stay)
        k = int(rng.integers(len(scene.parts)))
        kept = scene.parts[:k] + scene.parts[k + 1 :]
        return scene.redraw(kept), scene.part_coverage(scene.parts[k])
    centre = _sample_point(rng, scene.boundary)
    radius = rng.uniform(0.03, 0.13) * size
    chunk = _blob(size, rng, centre, radius, soft=1.0, roughness=0.2)
    return scene.background, chunk * scene.coverage


def _misplaced_part(scene: Scene, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(len(scene.parts)))
    part = scene.parts[k]
    d = rng.uniform(0.025, 0.07)
    direction = rng.uniform(0, 2 * np.pi)
    dangle = rng.choice([0.0, rng.uniform(-0.5, 0.5)])
    moved = part.moved(d * np.cos(direction), d * np.sin(direction), dangle)
    parts = scene.parts[:k] + [moved] + scene.parts[k + 1 :]
    alpha = np.maximum(scene.part_coverage(part), scene.part_coverage(moved))
    return scene.redraw(parts), alpha


DEFECT_FUNCTIONS: dict[str, Callable[[Scene, np.random.Generator, int], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch, "crack": _crack, "hole": _hole, "stain": _stain, "colour": _colour,
    "contamination": _contamination, "missing_part": _missing_part, "misplaced_part": _misplaced_part,
}


# --------------------------------------------------------------------------- one image


def _rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(category.encode()), zlib.crc32(split.encode()), index])


def render_sample(category: str, defect: str | None, rng: np.random.Generator,
                  size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: ``(clean, image, mask)``, uint8 H×W×3, uint8 H×W×3, bool H×W.

    ``clean`` is the same image without the defect (``image`` itself when ``defect`` is None);
    ``image`` differs from ``clean`` exactly on ``mask``.
    """
    if category not in RENDERERS:
        raise ConfigError(f"unknown synthetic category {category!r}; known: {', '.join(CATEGORIES)}")
    scene = RENDERERS[category](rng, size)
    clean = scene.image
    image, mask = clean, np.zeros((size, size), bool)
    if defect is not None:
        if defect not in DEFECTS[category]:
            raise ConfigError(
                f"defect {defect!r} is not made for {category!r}; its defects: {', '.join(DEFECTS[category])}"
            )
        for _ in range(30):
            target, alpha = DEFECT_FUNCTIONS[defect](scene, rng, size)
            alpha = np.where(alpha >= ALPHA_CUT, alpha, 0).astype(np.float32)
            mask = alpha > 0
            if mask.mean() >= MIN_MASK_FRACTION:
                break
        image = clean + (np.clip(target, 0, 1) - clean) * alpha[..., None]
    # lighting gradient and sensor noise, identical for the clean and the defective image
    yy, xx = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.04, 0.16) * (np.cos(a) * (xx - size / 2) + np.sin(a) * (yy - size / 2)) / size
    gain = rng.uniform(0.95, 1.05)
    noise = rng.normal(0, rng.uniform(0.006, 0.014), (size, size, 3)).astype(np.float32)

    def finish(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint((x * (light * gain)[..., None] + noise) * 255), 0, 255).astype(np.uint8)

    return finish(clean), finish(image), mask


# --------------------------------------------------------------------------- the tree


def _plan(category: str, n_test: int) -> list[tuple[str | None, int]]:
    """(defect or None, index) of every test image: about one third anomalous, round-robin defects."""
    n_anomalous = int(round(n_test / 3))
    plan: list[tuple[str | None, int]] = [(None, i) for i in range(n_test - n_anomalous)]
    kinds = DEFECTS[category]
    plan += [(kinds[i % len(kinds)], i // len(kinds)) for i in range(n_anomalous)]  # numbered per defect
    return plan


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


README = """Synthetic industrial anomaly dataset, generated by {generator} version {version}
(seed {seed}, {size}x{size} px). Procedural images drawn by the bench code; no third-party images.

Layout (MVTec AD's): <category>/train/good/*.png (normal), <category>/test/<defect>/*.png
(test/good = normal), <category>/ground_truth/<defect>/<stem>_mask.png (0/255 masks).
Categories: {categories}.
Regenerate with: bench.datasets.synthetic.generate(root, seed={seed}).
"""


def generate(root: Path, seed: int = 0, categories: list[str] | None = None, n_test: int = 120,
             n_train: int = 30, size: int = 256, progress: bool = True) -> Path:
    """Write the synthetic MVTec-layout tree under ``root``; returns ``root``.

    Deterministic from ``seed`` (bytes included, for the same numpy/scipy/Pillow/zlib). ``root``
    must be empty, missing, or an earlier synthetic tree (recognised by ``synthetic.json``, whose
    categories are replaced). Images are written under ``<root>/.incomplete`` and moved into place
    at the end, and ``synthetic.json`` is written last: an interrupted run leaves no half tree
    that looks complete, and the next run starts over. About one third of the ``n_test`` test images per category are
    anomalous, spread evenly over the category's defect types (``DEFECTS``).
    """
    root = Path(root).expanduser()
    categories = list(CATEGORIES if categories is None else categories)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown or not categories:
        raise ConfigError(
            f"unknown synthetic categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(CATEGORIES)}"
        )
    if len(set(categories)) != len(categories):
        raise ConfigError(f"synthetic categories repeated: {', '.join(categories)}")
    if size < 32:
        raise ConfigError(f"synthetic image size {size} is too small; use at least 32")
    if n_test < 1 or n_train < 0:
        raise ConfigError(f"synthetic n_test={n_test}, n_train={n_train}: need n_test >= 1 and n_train >= 0")
    marker = root / MARKER
    staging = root / STAGING  # hidden: loaders ignore it; an interrupted run leaves only this
    old = None
    if root.exists():
        if not root.is_dir():
            raise DatasetError(f"{root}: exists and is not a folder; cannot write the synthetic dataset there")
        old = read_marker(root)
        if old is None and any(p.name != STAGING for p in root.iterdir()):
            raise DatasetError(
                f"{root}: folder is not empty and holds no {MARKER} written by this generator; refusing "
                "to write the synthetic dataset into it (give an empty or new folder)"
            )
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)

    plans = {c: _plan(c, n_test) for c in categories}
    total = sum(len(p) + n_train for p in plans.values())
    with tqdm(total=total, desc="synthetic dataset", unit="img", disable=not progress) as bar:
        for category in categories:
            cat = staging / category
            folders = {cat / "train" / "good", cat / "test" / "good"}
            used = {d for d, _ in plans[category] if d is not None}
            folders |= {cat / sub / d for d in used for sub in ("test", "ground_truth")}
            for folder in folders:
                folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_train):
                _, image, _ = render_sample(category, None, _rng(seed, category, "train", i), size)
                _save_png(image, cat / "train" / "good" / f"{i:03d}.png")
                bar.update(1)
            for k, (defect, i) in enumerate(plans[category]):
                _, image, mask = render_sample(category, defect, _rng(seed, category, "test", k), size)
                folder = defect or "good"
                _save_png(image, cat / "test" / folder / f"{i:03d}.png")
                if defect is not None:
                    _save_png(mask.astype(np.uint8) * 255, cat / "ground_truth" / defect / f"{i:03d}_mask.png")
                bar.update(1)
    # swap in the new categories; the old tree stays complete and valid until here
    marker.unlink(missing_ok=True)
    replaced = set(categories) | {c for c in (old or {}).get("categories", []) if c in CATEGORIES}
    for name in sorted(replaced):
        if (root / name).is_dir():
            shutil.rmtree(root / name)
    for category in categories:
        (staging / category).rename(root / category)
    staging.rmdir()
    info = {
        "generator": GENERATOR, "version": GENERATOR_VERSION, "seed": seed, "size": size,
        "n_test": n_test, "n_train": n_train, "categories": categories,
        "defects": {c: list(DEFECTS[c]) for c in categories},
    }
    (root / "README.txt").write_text(README.format(
        generator=GENERATOR, version=GENERATOR_VERSION, seed=seed, size=size, categories=", ".join(categories)))
    marker.write_text(json.dumps(info, indent=2) + "\n")  # written last: its presence means complete
    return root


def read_marker(root: Path) -> dict | None:
    """The ``synthetic.json`` of a generated tree, or None."""
    try:
        info = json.loads((Path(root) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("generator") == GENERATOR else None


@DATASETS.register("synthetic", "embedded procedural dataset (6 categories), made by bench.datasets.synthetic.generate")
class SyntheticDataset(FolderDataset):
    """The folder loader on a tree written by ``generate`` (masks for every anomalous image)."""

    name = "synthetic"
    masks_required = True

    @classmethod
    def detect(cls, root: Path) -> int:
        """Highest of all loaders when ``<root>/synthetic.json`` was written by ``generate``."""
        return DETECT_SCORE if read_marker(Path(root)) is not None else 0

    @property
    def info(self) -> dict:
        return read_marker(self.root) or {}
