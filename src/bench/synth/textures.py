"""Fill textures of the ``texture`` recipe: image files of ``texture_dir`` (e.g. DTD), or procedural ones."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.errors import ConfigError

from .noise import _perlin

TEXTURE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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
