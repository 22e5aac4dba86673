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

import numpy as np
from PIL import Image, ImageDraw

from .config import FOREGROUND_MODES, RECIPES, SynthConfig
from .masks import _rect_mask, estimate_foreground, perlin_mask
from .noise import perlin_noise
from .textures import TEXTURE_EXTENSIONS, _load_texture, _procedural_values, _texture_files, procedural_texture

__all__ = ["FOREGROUND_MODES", "RECIPES", "TEXTURE_EXTENSIONS", "SynthConfig", "estimate_foreground", "perlin_mask",
           "perlin_noise", "procedural_texture", "synthesize", "synthesize_set"]


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
