"""Anomaly masks: thresholded, rotated Perlin noise with bounded area (DRAEM), rectangles, the foreground."""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from .config import SynthConfig
from .noise import _perlin, perlin_noise

_MAX_TRIES = 20  # Perlin redraws before falling back to a quantile threshold


def _draw_perlin(shape: tuple[int, int], rng: np.random.Generator, config: SynthConfig) -> np.ndarray:
    """One random mask noise field (DRAEM draw: 2**k cells per axis, angle in [-90°, 90°]).

    For speed the field is evaluated on a grid with at least 4 samples per lattice cell (every
    pixel for fine lattices) and bilinearly upsampled to ``shape``; a smooth field loses nothing.
    """
    h, w = shape
    lo, hi = config.perlin_scale_range
    ky, kx = rng.integers(lo, hi, size=2)
    res = (2.0**ky, 2.0**kx)
    angle = float(rng.uniform(-90.0, 90.0))
    step = max(1, int(min(h / res[0], w / res[1]) // 4))
    hc, wc = max(2, -(-h // step)), max(2, -(-w // step))
    if step == 1 or hc >= h or wc >= w:
        return perlin_noise(shape, res, rng, angle)
    y = ((np.arange(hc, dtype=np.float32) + np.float32(0.5)) * np.float32(h / hc))[:, None]
    x = ((np.arange(wc, dtype=np.float32) + np.float32(0.5)) * np.float32(w / wc))[None, :]
    coarse = _perlin(y, x, (h, w), res, rng, angle)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    config: SynthConfig = SynthConfig(),
    region: np.ndarray | None = None,
) -> np.ndarray:
    """A blob mask (H×W bool): thresholded, rotated Perlin noise with random lattice scale.

    The area (as a fraction of ``region``, the whole image by default) lies within the config's
    bounds: masks outside them are redrawn, and after ``_MAX_TRIES`` draws the threshold of the
    last noise is lowered/raised to the quantile that meets them.
    """
    h, w = shape
    usable = h * w if region is None else int(region.sum())
    lo_px = max(1, int(np.ceil(config.min_area_fraction * usable)))
    hi_px = max(lo_px, int(np.floor(config.max_area_fraction * usable)))
    noise = None
    for _ in range(_MAX_TRIES):
        noise = _draw_perlin(shape, rng, config)
        mask = noise > config.threshold
        if region is not None:
            mask &= region
        area = int(mask.sum())
        if lo_px <= area <= hi_px:
            return mask
    assert noise is not None
    values = noise[region] if region is not None else noise.ravel()
    target = int(rng.integers(lo_px, hi_px + 1))
    kth = np.partition(values, values.size - target)[values.size - target]
    mask = noise >= kth
    if region is not None:
        mask &= region
    return mask  # non-empty: the pixel holding the kth value is in it


def _rect_mask(
    shape: tuple[int, int], rng: np.random.Generator, config: SynthConfig
) -> np.ndarray:
    """An axis-aligned rectangle with area in the config's bounds (CutPaste's aspect 0.3–3.3)."""
    h, w = shape
    a_lo = max(config.min_area_fraction, 0.01)
    a_hi = min(config.max_area_fraction, 0.15)
    if a_lo > a_hi:
        a_lo, a_hi = config.min_area_fraction, config.max_area_fraction
    area = rng.uniform(a_lo, a_hi) * h * w
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(1 / 0.3)))
    rh = int(np.clip(round(np.sqrt(area * aspect)), 1, h))
    lo_px = max(1, int(np.ceil(config.min_area_fraction * h * w)))
    hi_px = max(lo_px, int(np.floor(config.max_area_fraction * h * w)))
    rw = int(np.clip(round(area / rh), -(-lo_px // rh), max(1, hi_px // rh)))
    rw = min(rw, w)
    y0 = int(rng.integers(0, h - rh + 1))
    x0 = int(rng.integers(0, w - rw + 1))
    mask = np.zeros(shape, dtype=bool)
    mask[y0 : y0 + rh, x0 : x0 + rw] = True
    return mask


def estimate_foreground(image: np.ndarray, tolerance: float = 25.0) -> np.ndarray | None:
    """Pixels unlike the median border colour (objects on a plain background), or ``None``.

    Returns ``None`` (use the whole image) when the border is not plain (90 % of border pixels
    within ``tolerance / 2`` of its median) or the estimate covers under 5 % or over 95 % of the
    image (nothing stands out).
    """
    h, w = image.shape[:2]
    b = max(1, min(h, w) // 16)
    border = np.concatenate(
        [image[:b].reshape(-1, 3), image[-b:].reshape(-1, 3), image[:, :b].reshape(-1, 3), image[:, -b:].reshape(-1, 3)]
    )
    ref = np.median(border, axis=0).astype(np.int16)
    if np.percentile(np.abs(border.astype(np.int16) - ref).max(axis=1), 90) > tolerance / 2:
        return None  # the border is not a plain background (texture, clutter)
    diff = np.abs(image.astype(np.int16) - ref).max(axis=2)
    fg = diff > tolerance
    fg = ndimage.binary_opening(fg, iterations=1)
    fg = ndimage.binary_fill_holes(fg)
    frac = fg.mean()
    if not 0.05 <= frac <= 0.95:
        return None
    return ndimage.binary_dilation(fg, iterations=2)
