"""Drawing primitives of the embedded generator: grids, anti-aliased shapes, smooth noise, colours."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter


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


