"""Defects of the embedded generator; each returns (target image T, alpha a), composited as clean·(1−a) + T·a."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ._draw import _bezier, _blob, _hue_rotate, _mix, _polyline, _sample_point
from ._scenes import Scene


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
