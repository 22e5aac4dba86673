"""Clean scenes of the embedded generator: the three textures (fabric, wood, tile) and two objects (nut, pill)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy.ndimage import gaussian_filter

from ._draw import _aa, _fine, _grid, _jitter, _lowfreq, _mix, _normalise


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


