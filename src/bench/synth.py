"""Anomaly synthesis for PGT training: Perlin-shaped masks filled by texture, cut-paste or pattern.

PGT trains a refiner on pseudo-normal test images of a group with synthetic anomalies pasted on
them (docs/design.md, "PGT"). Everything here is our own numpy/PIL code and is deterministic given
a ``np.random.Generator``; it is independent of the embedded dataset's defect generator
(``bench/embedded``), so a refiner cannot score well by learning that generator.

Masks: DRAEM-style thresholded Perlin noise. The lattice resolution along each axis is
``2 ** k`` with ``k`` an integer drawn from ``[lo, hi)`` of ``perlin_scale_range`` (DRAEM draws
``randint(0, 6)``), the noise (range [-1, 1]) is rotated by a random angle in [-90°, 90°] and
thresholded at ``threshold``. Masks whose area fraction falls outside
``[min_area_fraction, max_area_fraction]`` are redrawn; after ``_MAX_TRIES`` draws the last noise
field is thresholded at the quantile that gives an area inside the bounds, so synthesis always
terminates with a valid mask.

Recipes (``SynthConfig.recipes``; one is drawn uniformly per image):

- ``texture``: a fill image (a random image of ``texture_dir`` if given, e.g. DTD, randomly
  flipped, gain/offset jittered, sometimes inverted; otherwise a procedural texture: a coloured
  fractal Perlin mix, stripes or a checkerboard), alpha-blended inside the mask with opacity
  ``beta ~ U(beta_range)`` (``beta = 1`` replaces the pixel).
- ``cutpaste``: a window cut from another image of the group (``pool``), optionally flipped,
  rotated by a multiple of 90° and colour jittered, pasted opaquely under a Perlin or a
  rectangular mask; the window is taken away from the mask's own place where the image allows,
  since a group's aligned objects would otherwise give near-identical content (where it cannot
  move, the donor is always flipped or rotated). Without a pool the image itself is the donor
  (the CutPaste paper's setting).
- ``pattern``: the image colour-shifted inside the mask (every channel moves by 15 to 60 levels),
  with random scratches (poly-lines) or dots drawn over it, or the colour shift alone.

Contract: the returned mask is exactly the set of pixels that were written; every pixel outside
it is byte-identical to the input. (A written pixel can keep its value by coincidence, e.g. a
faint blend of a fill that matches the image there.)
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError
from scipy import ndimage

from bench.errors import ConfigError

RECIPES: tuple[str, ...] = ("texture", "cutpaste", "pattern")
FOREGROUND_MODES: tuple[str, ...] = ("none", "border")
TEXTURE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_MAX_TRIES = 20  # Perlin redraws before falling back to a quantile threshold


@dataclass
class SynthConfig:
    """Options of the anomaly synthesis, ``pgt.synth.*`` of a run; validated on construction and by
    ``validate`` (``ConfigError`` naming ``pgt.synth.<key>``).

    ``recipes``: fill recipes to draw from uniformly, any of ``texture``, ``cutpaste``,
    ``pattern``. ``perlin_scale_range``: exponents ``[lo, hi)`` of the Perlin lattice resolution
    ``2**k`` per axis (DRAEM: ``(0, 6)``). ``threshold``: Perlin threshold, noise in [-1, 1]
    (DRAEM: 0.5). ``beta_range``: opacity of the ``texture`` fill. ``min_area_fraction`` /
    ``max_area_fraction``: bounds on the mask area as a fraction of the usable region; masks
    outside them are redrawn. ``texture_dir``: optional folder of texture images (searched
    recursively, e.g. DTD's ``images/``); ``None`` uses procedural textures.
    ``foreground``: ``none`` (whole image) or ``border`` (pixels unlike the median border colour,
    for objects on a plain background; falls back to the whole image when the estimate is
    implausible).
    """

    recipes: tuple[str, ...] = RECIPES
    perlin_scale_range: tuple[int, int] = (0, 6)
    threshold: float = 0.5
    beta_range: tuple[float, float] = (0.1, 1.0)
    min_area_fraction: float = 0.002
    max_area_fraction: float = 0.3
    texture_dir: str | None = None
    foreground: str = "none"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, prefix: str = "pgt.synth") -> "SynthConfig":
        """Check every option; errors name ``<prefix>.<key>``."""
        recipes = tuple(self.recipes) if not isinstance(self.recipes, str) else (self.recipes,)
        self.recipes = recipes
        if not recipes:
            raise ConfigError(f"{prefix}.recipes is empty; choose one or more of {', '.join(RECIPES)}")
        unknown = [r for r in recipes if r not in RECIPES]
        if unknown:
            raise ConfigError(
                f"{prefix}.recipes: unknown recipe {', '.join(map(repr, unknown))}; "
                f"valid recipes are {', '.join(RECIPES)}"
            )
        for key in ("perlin_scale_range", "beta_range"):
            if len(tuple(getattr(self, key))) != 2:
                raise ConfigError(f"{prefix}.{key}={getattr(self, key)!r}: need two values [lo, hi]")
        lo, hi = self.perlin_scale_range
        if not (int(lo) == lo and int(hi) == hi and 0 <= lo < hi <= 10):
            raise ConfigError(
                f"{prefix}.perlin_scale_range={self.perlin_scale_range!r}: need integers 0 <= lo < hi <= 10 "
                "(lattice resolution 2**k, k drawn from [lo, hi))"
            )
        if not -1.0 < self.threshold < 1.0:
            raise ConfigError(f"{prefix}.threshold={self.threshold}: must lie in (-1, 1) (Perlin noise range)")
        b0, b1 = self.beta_range
        if not 0.0 < b0 <= b1 <= 1.0:
            raise ConfigError(f"{prefix}.beta_range={self.beta_range!r}: need 0 < lo <= hi <= 1")
        if not 0.0 < self.min_area_fraction < self.max_area_fraction <= 1.0:
            raise ConfigError(
                f"{prefix}.min_area_fraction={self.min_area_fraction}, max_area_fraction="
                f"{self.max_area_fraction}: need 0 < min < max <= 1"
            )
        if self.foreground not in FOREGROUND_MODES:
            raise ConfigError(
                f"{prefix}.foreground={self.foreground!r}: valid values are {', '.join(FOREGROUND_MODES)}"
            )
        if self.texture_dir is not None:
            _texture_files(str(self.texture_dir))  # raises ConfigError naming the folder
        return self


# --------------------------------------------------------------------------------------------
# Perlin noise and masks


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


# --------------------------------------------------------------------------------------------
# Textures


@functools.lru_cache(maxsize=16)
def _texture_files(texture_dir: str) -> tuple[str, ...]:
    root = Path(texture_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"pgt.synth.texture_dir={texture_dir!r}: folder not found (looked for {root.resolve()}); "
            "point it to a folder of texture images (e.g. DTD's images/) or leave it unset"
        )
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in TEXTURE_EXTENSIONS and p.is_file())
    readable = []
    for p in files:
        try:
            with Image.open(p) as im:
                im.verify()
            readable.append(str(p))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            continue
    if not readable:
        raise ConfigError(
            f"pgt.synth.texture_dir={texture_dir!r}: no readable images in {root.resolve()} "
            f"({len(files)} file(s) with extensions {', '.join(TEXTURE_EXTENSIONS)} found)"
        )
    return tuple(readable)


@functools.lru_cache(maxsize=64)
def _load_texture(path: str, h: int, w: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            arr = np.asarray(im).copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ConfigError(f"pgt.synth.texture_dir: {path}: not a readable image ({exc})") from None
    arr.flags.writeable = False
    return arr


def _random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0.0, 255.0, size=(n, 3)).astype(np.float32)


def _procedural_values(
    shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Procedural texture at pixels (``ys``, ``xs``) → (N, 3) float32 in [0, 255]."""
    y = ys.astype(np.float32) + np.float32(0.5)
    x = xs.astype(np.float32) + np.float32(0.5)
    kind = int(rng.integers(0, 3))
    if kind == 0:  # fractal Perlin (3 octaves) mapped through a random 2-3 colour ramp
        base = float(2 ** rng.integers(2, 5))
        angle = float(rng.uniform(-90.0, 90.0))
        t = np.zeros(y.shape, dtype=np.float32)
        for octave, amp in enumerate((1.0, 0.5, 0.25)):
            r = base * 2**octave
            t += np.float32(amp) * _perlin(y, x, shape, (r, r), rng, angle)
        t -= t.min()
        t /= max(float(t.max()), 1e-6)
        n = int(rng.integers(2, 4))
        colours = _random_colours(rng, n)
        pos = t * np.float32(n - 1)
        i0 = np.minimum(pos.astype(np.int32), n - 2)
        f = (pos - i0)[:, None]
        return colours[i0] * (1.0 - f) + colours[i0 + 1] * f
    a = rng.uniform(0.0, np.pi)
    period = np.float32(rng.uniform(4.0, max(8.0, min(shape) / 6.0)))
    c0, c1 = _random_colours(rng, 2)
    ca, sa = np.float32(np.cos(a)), np.float32(np.sin(a))
    if kind == 1:  # stripes, smooth or hard
        t = np.float32(0.5) + np.float32(0.5) * np.sin((ca * x + sa * y) * (np.float32(2.0 * np.pi) / period))
        if rng.random() < 0.5:
            t = (t > 0.5).astype(np.float32)
    else:  # rotated checkerboard
        u = ca * x + sa * y
        v = ca * y - sa * x
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    t = t[:, None]
    return c0 * (1.0 - t) + c1 * t


def procedural_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An H×W×3 float32 texture in [0, 255]: coloured fractal Perlin, stripes or checkerboard."""
    h, w = shape
    ys, xs = np.divmod(np.arange(h * w), w)
    return _procedural_values((h, w), ys, xs, rng).reshape(h, w, 3)


def _texture_values(
    shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator, config: SynthConfig
) -> np.ndarray:
    """The ``texture`` recipe's fill at pixels (``ys``, ``xs``) → (N, 3) float32.

    With a texture folder: a random image of it resized to the image, randomly flipped
    (each axis p=0.5), gain 0.7-1.3, offset ±30, inverted with p=0.2. Otherwise procedural.
    """
    if config.texture_dir is None:
        return _procedural_values(shape, ys, xs, rng)
    h, w = shape
    files = _texture_files(str(config.texture_dir))
    tex = _load_texture(files[int(rng.integers(len(files)))], h, w)
    if rng.random() < 0.5:
        xs = w - 1 - xs
    if rng.random() < 0.5:
        ys = h - 1 - ys
    out = tex[ys, xs].astype(np.float32)
    out *= np.float32(rng.uniform(0.7, 1.3))
    out += np.float32(rng.uniform(-30.0, 30.0))
    if rng.random() < 0.2:
        out = np.float32(255.0) - out
    return out


# --------------------------------------------------------------------------------------------
# Recipes: each returns (fill, mask) with fill an H×W×3 array written under mask


def _recipe_texture(image, rng, pool, config, region):
    h, w = image.shape[:2]
    mask = perlin_mask((h, w), rng, config, region)
    ys, xs = np.nonzero(mask)
    fill = _texture_values((h, w), ys, xs, rng, config)
    beta = np.float32(rng.uniform(*config.beta_range))
    blended = image[ys, xs].astype(np.float32)
    blended *= np.float32(1.0) - beta
    blended += beta * fill
    return (ys, xs), np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _jitter_donor(
    donor: np.ndarray, rng: np.random.Generator, shape: tuple[int, int], force: bool = False
) -> np.ndarray:
    """Donor image flipped / rotated by k·90° (each p=0.5; ``force``: at least one of them),
    resized to ``shape``, colour jittered (p=0.5)."""
    flip, rot = rng.random() < 0.5, rng.random() < 0.5
    if force and not (flip or rot):
        flip = True
    if flip:
        donor = donor[:, ::-1]
    if rot:
        donor = np.rot90(donor, int(rng.integers(1, 4)))
    h, w = shape
    if donor.shape[:2] != (h, w):
        donor = np.asarray(Image.fromarray(np.ascontiguousarray(donor)).resize((w, h), Image.BILINEAR))
    out = donor.astype(np.float32)
    if rng.random() < 0.5:  # colour jitter: brightness, per-channel gain, offset
        gain = rng.uniform(0.9, 1.1) * rng.uniform(0.95, 1.05, size=3)
        out = out * gain.astype(np.float32) + np.float32(rng.uniform(-8.0, 8.0))
    return out


def _recipe_cutpaste(image, rng, pool, config, region):
    h, w = image.shape[:2]
    donors = [p for p in (pool or []) if p is not image]
    self_donor = not donors
    donor = image if self_donor else donors[int(rng.integers(len(donors)))]
    if rng.random() < 0.5:
        mask = perlin_mask((h, w), rng, config, region)
    else:
        mask = _rect_mask((h, w), rng, config)
        if region is not None:
            mask &= region
            usable = int(region.sum())
            if not config.min_area_fraction * usable <= mask.sum() <= config.max_area_fraction * usable:
                mask = perlin_mask((h, w), rng, config, region)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    bh, bw = y1 - y0, x1 - x0
    # window of the donor with the mask's bounding-box size, away from the mask's own place
    # (a group's aligned objects would otherwise paste near-identical content)
    sy, sx = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    for _ in range(8):
        moved = abs(sy - y0) >= max(1, bh // 2) or abs(sx - x0) >= max(1, bw // 2)
        if moved or (h == bh and w == bw):
            break
        sy, sx = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    moved = abs(sy - y0) >= max(1, bh // 2) or abs(sx - x0) >= max(1, bw // 2)
    # a self-donor, or a window that could not move, is always flipped or rotated
    src = _jitter_donor(donor, rng, (h, w), force=self_donor or not moved)
    vals = src[ys - y0 + sy, xs - x0 + sx]
    return (ys, xs), np.clip(np.rint(vals), 0, 255).astype(np.uint8)


def _colour_shift(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift each channel by ±15..60 levels, reflected at the range ends: every value changes."""
    d = np.rint(rng.uniform(15.0, 60.0, size=3) * rng.choice([-1.0, 1.0], size=3)).astype(np.int16)
    v = np.arange(256, dtype=np.int16)[None, :] + d[:, None]  # (3, 256) lookup tables
    lut = np.where((v < 0) | (v > 255), np.arange(256, dtype=np.int16)[None, :] - d[:, None], v).astype(np.uint8)
    return lut[np.arange(3), pixels]


def _recipe_pattern(image, rng, pool, config, region):
    h, w = image.shape[:2]
    mask = perlin_mask((h, w), rng, config, region)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    crop = image[y0:y1, x0:x1]
    layer = _colour_shift(crop, rng)
    kind = int(rng.integers(0, 3))  # 0 scratches, 1 dots, 2 colour shift only
    if kind < 2:
        bh, bw = y1 - y0, x1 - x0
        pil = Image.fromarray(layer)
        draw = ImageDraw.Draw(pil)
        area = int(mask.sum())
        if kind == 0:
            n = int(np.clip(area / 400, 3, 40))
            for _ in range(n):
                k = int(rng.integers(2, 5))
                pts = np.stack([rng.uniform(0, bw, k), rng.uniform(0, bh, k)], axis=1)
                colour = tuple(int(c) for c in rng.integers(0, 256, 3))
                draw.line([tuple(p) for p in pts.tolist()], fill=colour, width=int(rng.integers(1, 5)))
        else:
            n = int(np.clip(area / 150, 3, 200))
            for _ in range(n):
                cy, cx = rng.uniform(0, bh), rng.uniform(0, bw)
                r = rng.uniform(1.0, max(1.5, min(6.0, min(bh, bw) / 4)))
                colour = tuple(int(c) for c in rng.integers(0, 256, 3))
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        layer = np.asarray(pil)
    return (ys, xs), layer[ys - y0, xs - x0]


_RECIPE_FNS = {"texture": _recipe_texture, "cutpaste": _recipe_cutpaste, "pattern": _recipe_pattern}


# --------------------------------------------------------------------------------------------
# Public API


def _check_image(image: np.ndarray, what: str = "image") -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"{what}: expected an H×W×3 uint8 array, got shape/dtype {got}")


def synthesize(
    image: np.ndarray,
    rng: np.random.Generator,
    pool: list[np.ndarray] | None = None,
    config: SynthConfig = SynthConfig(),
    foreground: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic anomaly on ``image`` (H×W×3 uint8) → (anomalous image, mask H×W bool).

    The recipe is drawn uniformly from ``config.recipes``; ``pool`` holds the other images of
    the group (cut-paste donors; any size). ``foreground`` (H×W bool) restricts the mask; when
    not given, ``config.foreground`` decides. The mask is exactly the written pixels: every pixel
    outside it is byte-identical to ``image``.
    """
    _check_image(image)
    h, w = image.shape[:2]
    region = None
    if foreground is not None:
        region = np.asarray(foreground, dtype=bool)
        if region.shape != (h, w):
            raise ValueError(f"foreground: shape {region.shape} differs from the image's {(h, w)}")
        if region.sum() < max(1.0, config.min_area_fraction * h * w):
            region = None  # too small to hold a mask: use the whole image
    elif config.foreground == "border":
        region = estimate_foreground(image)
    for i, p in enumerate(pool or []):
        _check_image(p, f"pool[{i}]")
    recipe = config.recipes[int(rng.integers(len(config.recipes)))]
    (ys, xs), values = _RECIPE_FNS[recipe](image, rng, pool, config, region)
    out = image.copy()
    out[ys, xs] = values
    mask = np.zeros((h, w), dtype=bool)
    mask[ys, xs] = True
    return out, mask


def synthesize_set(
    images: list[np.ndarray],
    n: int,
    rng: np.random.Generator,
    config: SynthConfig = SynthConfig(),
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """``n`` anomalous images from the normal ``images`` → (images, masks, source indices).

    Sources cycle through ``images`` in a fresh random order per pass (each image is used
    ``n // len(images)`` or one more times); cut-paste donors are the other images.
    """
    if n < 0:
        raise ValueError(f"n={n}: must be >= 0")
    if n and not images:
        raise ValueError("synthesize_set: no source images to synthesize anomalies on")
    order: list[int] = []
    while len(order) < n:
        order.extend(int(i) for i in rng.permutation(len(images)))
    order = order[:n]
    out_images, out_masks = [], []
    for i in order:
        pool = [im for j, im in enumerate(images) if j != i]
        img, mask = synthesize(images[i], rng, pool, config)
        out_images.append(img)
        out_masks.append(mask)
    return out_images, out_masks, order
