"""Perlin gradient noise (float32, seeded by a ``np.random.Generator``): the shape of PGT's synthetic masks and textures."""
from __future__ import annotations

import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    """6t^5 - 15t^4 + 10t^3 (Perlin's quintic fade), float32."""
    r = t * np.float32(6.0)
    r -= np.float32(15.0)
    r *= t
    r += np.float32(10.0)
    r *= t
    r *= t
    r *= t
    return r


def _perlin(
    y: np.ndarray,
    x: np.ndarray,
    shape: tuple[int, int],
    res: tuple[float, float],
    rng: np.random.Generator,
    angle: float,
) -> np.ndarray:
    """Perlin noise at pixel-centre coordinates ``y``, ``x`` (broadcastable float arrays).

    The lattice (``res`` cells across ``shape``, rotated by ``angle`` degrees about the image
    centre) is sized from the image's corners, so the field does not depend on which points are
    asked for: a full grid and a subset of its points get the same values for the same ``rng``.
    """
    h, w = shape
    a = np.deg2rad(angle)
    c, s = np.float32(np.cos(a)), np.float32(np.sin(a))
    sy, sx = np.float32(res[0] / h), np.float32(res[1] / w)
    cy, cx = np.float32(h / 2), np.float32(w / 2)
    # lattice extents from the 4 corner pixel centres
    ky = (np.array([0.5, 0.5, h - 0.5, h - 0.5]) - h / 2) * (res[0] / h)
    kx = (np.array([0.5, w - 0.5, 0.5, w - 0.5]) - w / 2) * (res[1] / w)
    ku, kv = np.cos(a) * kx - np.sin(a) * ky, np.sin(a) * kx + np.cos(a) * ky
    u0, v0 = np.floor(ku.min()), np.floor(kv.min())
    gw, gh = int(ku.max() - u0) + 2, int(kv.max() - v0) + 2
    ys = (np.asarray(y, dtype=np.float32) - cy) * sy
    xs = (np.asarray(x, dtype=np.float32) - cx) * sx
    u = c * xs - s * ys - np.float32(u0)
    v = s * xs + c * ys - np.float32(v0)
    u = np.clip(u, 0.0, gw - 1.001, out=u)  # float32 rounding at the extremes
    v = np.clip(v, 0.0, gh - 1.001, out=v)
    iu = u.astype(np.int32)
    iv = v.astype(np.int32)
    u -= iu  # fractional parts from here on
    v -= iv
    theta = rng.uniform(0.0, 2.0 * np.pi, size=gh * gw)
    gx = np.cos(theta).astype(np.float32)
    gy = np.sin(theta).astype(np.float32)
    # gradients of the 4 corners (00, 10, 01, 11) of every cell, indexed by the cell's 00 corner
    corners = np.stack(
        [gx[: -gw - 1], gy[: -gw - 1], gx[1:-gw], gy[1:-gw], gx[gw:-1], gy[gw:-1], gx[gw + 1 :], gy[gw + 1 :]]
    )
    iv *= gw
    iv += iu
    g = corners[:, iv]
    n00 = g[0] * u
    n00 += g[1] * v
    n10 = g[2] * u
    n10 += g[3] * v
    n10 -= g[2]
    n01 = g[4] * u
    n01 += g[5] * v
    n01 -= g[5]
    n11 = g[6] * u
    n11 += g[7] * v
    n11 -= g[6]
    n11 -= g[7]
    tu, tv = _fade(u), _fade(v)
    n10 -= n00
    n10 *= tu
    n00 += n10  # lerp along u, row 0
    n11 -= n01
    n11 *= tu
    n01 += n11  # lerp along u, row 1
    n01 -= n00
    n01 *= tv
    n00 += n01  # lerp along v
    n00 *= np.float32(np.sqrt(2.0))
    return np.clip(n00, -1.0, 1.0, out=n00)


def perlin_noise(
    shape: tuple[int, int],
    res: tuple[float, float],
    rng: np.random.Generator,
    angle: float = 0.0,
) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` in [-1, 1], float32.

    ``res`` is the number of lattice cells along (y, x) across the image (any positive value,
    the shape need not be divisible by it); ``angle`` (degrees) rotates the lattice. Scaled by
    √2 as in DRAEM so the values span [-1, 1].
    """
    h, w = int(shape[0]), int(shape[1])
    y = np.arange(h, dtype=np.float32)[:, None] + np.float32(0.5)
    x = np.arange(w, dtype=np.float32)[None, :] + np.float32(0.5)
    return _perlin(y, x, (h, w), (float(res[0]), float(res[1])), rng, float(angle))
