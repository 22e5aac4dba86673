"""A real-photograph evaluation set: crops of photographs that ship in scikit-image, with made defects.

Why (issue 15): the embedded dataset is procedural; a refiner's defaults should also be checked on
real images that nothing was tuned on. ``generate(root, seed)`` writes an MVTec-layout tree::

    <root>/photos.json, <root>/README.txt
    <root>/<cat>/train/good/000.png ...,  <root>/<cat>/test/good/000.png ...
    <root>/<cat>/test/<defect>/000.png ..., <root>/<cat>/ground_truth/<defect>/000_mask.png (0/255)

Source: the sample photographs in the ``skimage/data`` folder of the scikit-image wheel (extra
``photos``: ``pip install 'anorefiner-bench[photos]'``), read as files (scikit-image itself is not
imported). Categories (``SOURCES``): ``brick``, ``grass``, ``gravel`` (greyscale texture photographs,
CC0, from CC0Textures / DeviantArt), ``ihc`` (an immunohistochemistry micrograph of colonic glands,
"no known copyright restrictions") and ``retina`` (a fundus photograph, CC0, the central half of the
image). Every image is a random crop (side ±15 %, a random quarter-turn and flip) resized to
``size`` px. Licences as scikit-image's docstrings of ``skimage.data`` state them.

Defects (``DEFECTS``, about one third of the test images, round robin), each an alpha map ``a`` and
a target ``T`` with image = clean·(1−a) + T·a and ``a`` cut to 0 below ``ALPHA_CUT``, so the mask
``a > 0`` is exactly where the defect was applied:

- ``patch``: a soft-edged blob of ANOTHER photograph (another category's source, or coffee, chelsea,
  astronaut — CC0 / public domain) pasted in;
- ``scratch``: a thin light or dark line along a random curve (a random walk of the heading);
- ``stain``: a low-contrast tinted, soft-edged blob (12–30 % towards a random colour);
- ``missing``: a blob whose content is lost, inpainted by a strong Gaussian blur of the image.

Blobs are ellipses whose edge is displaced by smoothed noise. The generator is independent of PGT's
training-time synthesis (``bench/synth.py``: Perlin masks, textures, cut-paste within the group)
and of the embedded generator (``bench/datasets/synthetic.py``). Every image depends only on
(seed, category, split, index, size) and the scikit-image files.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import distance_transform_edt, gaussian_filter
from tqdm.auto import tqdm

from bench.data import read_json_marker
from bench.errors import ConfigError, DatasetError

GENERATOR = "bench.photos"
GENERATOR_VERSION = 1
MARKER = "photos.json"
STAGING = ".incomplete"
ALPHA_CUT = 0.1
MIN_MASK_FRACTION = 5e-4

# category -> (file in skimage/data, crop side as a fraction of the image side, region (y0, y1, x0, x1) as fractions)
SOURCES: dict[str, tuple[str, float, tuple[float, float, float, float]]] = {
    "brick": ("brick.png", 0.5, (0, 1, 0, 1)),
    "grass": ("grass.png", 0.5, (0, 1, 0, 1)),
    "gravel": ("gravel.png", 0.5, (0, 1, 0, 1)),
    "ihc": ("ihc.png", 0.5, (0, 1, 0, 1)),
    "retina": ("retina.jpg", 0.3, (0.25, 0.75, 0.25, 0.75)),
}
CATEGORIES = tuple(SOURCES)
EXTRA_DONORS = ("coffee.png", "chelsea.png", "astronaut.png")
DEFECTS = ("patch", "scratch", "stain", "missing")
INSTALL = "pip install 'anorefiner-bench[photos]' (or scikit-image)"


def photo_dir() -> Path:
    """The ``skimage/data`` folder of the installed scikit-image (found without importing it)."""
    spec = importlib.util.find_spec("skimage")
    folder = Path(next(iter(spec.submodule_search_locations or []), "")) / "data" if spec else None
    if folder is None or not (folder / SOURCES["brick"][0]).is_file():
        raise ConfigError(f"the photos dataset reads the photographs that ship with scikit-image, which is not installed: {INSTALL}")
    return folder


@lru_cache(maxsize=16)
def _photo(name: str) -> np.ndarray:
    """A source photograph as float32 RGB in [0, 1]."""
    with Image.open(photo_dir() / name) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255


def _crop(photo: np.ndarray, rng: np.random.Generator, size: int, side: float,
          region: tuple[float, float, float, float] = (0, 1, 0, 1)) -> np.ndarray:
    """A random square crop (``side`` of the shorter image side, ±15 %) resized to ``size``, turned and flipped."""
    h, w = photo.shape[:2]
    y0, y1, x0, x1 = int(region[0] * h), int(region[1] * h), int(region[2] * w), int(region[3] * w)
    s = min(int(side * min(h, w) * rng.uniform(0.85, 1.15)), y1 - y0, x1 - x0)
    y, x = int(rng.integers(y0, y1 - s + 1)), int(rng.integers(x0, x1 - s + 1))
    patch = Image.fromarray(np.uint8(np.rint(photo[y : y + s, x : x + s] * 255)))
    out = np.asarray(patch.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32) / 255
    out = np.rot90(out, int(rng.integers(4)))
    return np.ascontiguousarray(out[:, ::-1] if rng.random() < 0.5 else out)


# --------------------------------------------------------------------------- defects


def _blob(rng: np.random.Generator, size: int, area: float, soft: float) -> np.ndarray:
    """Alpha of an ellipse covering about ``area`` of the image, its edge displaced by smoothed noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    cy, cx = rng.uniform(0.15, 0.85, 2) * size
    r = np.sqrt(area * size * size / np.pi)
    ratio = rng.uniform(0.4, 1.0)
    a, b = r / np.sqrt(ratio), r * np.sqrt(ratio)
    t = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
    v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
    noise = gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), max(r / 3, 1.0))
    noise /= np.abs(noise).max() + 1e-12
    d = np.sqrt((u / a) ** 2 + (v / b) ** 2) + 0.35 * noise
    return np.clip((1 - d) / soft, 0, 1)


def _curve_distance(rng: np.random.Generator, size: int) -> np.ndarray:
    """Distance (px) to a random curve: a walk of ``length`` unit steps whose heading drifts smoothly."""
    length = int(rng.uniform(0.15, 0.6) * size)
    turn = gaussian_filter(rng.normal(0, 0.25, length), 6) * rng.uniform(0.3, 1.2)
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(turn)
    ys = rng.uniform(0.2, 0.8) * size + np.cumsum(np.sin(heading))
    xs = rng.uniform(0.2, 0.8) * size + np.cumsum(np.cos(heading))
    inside = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
    line = np.ones((size, size), bool)
    line[ys[inside].astype(int), xs[inside].astype(int)] = False
    return distance_transform_edt(line)


def _defect(kind: str, clean: np.ndarray, rng: np.random.Generator, category: str) -> tuple[np.ndarray, np.ndarray]:
    """(target image, alpha) of one defect on ``clean`` (H×W×3 float in [0, 1])."""
    size = clean.shape[0]
    if kind == "patch":
        donors = [SOURCES[c][0] for c in CATEGORIES if c != category] + list(EXTRA_DONORS)
        donor = _photo(donors[int(rng.integers(len(donors)))])
        return _crop(donor, rng, size, 0.5), _blob(rng, size, rng.uniform(0.004, 0.03), rng.uniform(0.1, 0.3))
    if kind == "scratch":
        width = rng.uniform(0.6, 1.8) * size / 256
        alpha = np.clip(width + 0.5 - _curve_distance(rng, size), 0, 1) * rng.uniform(0.5, 0.85)
        return np.full_like(clean, float(rng.random() < 0.5)), alpha
    if kind == "stain":
        tint = rng.uniform(0, 1, 3).astype(np.float32)
        strength = rng.uniform(0.12, 0.3)
        return clean * (1 - strength) + tint * strength, _blob(rng, size, rng.uniform(0.005, 0.04), rng.uniform(0.3, 0.6))
    if kind == "missing":
        blurred = np.stack([gaussian_filter(clean[..., c], 0.04 * size) for c in range(3)], -1)
        return blurred, _blob(rng, size, rng.uniform(0.004, 0.03), rng.uniform(0.1, 0.25))
    raise ConfigError(f"unknown photo defect {kind!r}; known: {', '.join(DEFECTS)}")


def render(category: str, defect: str | None, rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One image: ``(image uint8 H×W×3, mask bool H×W)``; the mask is empty when ``defect`` is None."""
    if category not in SOURCES:
        raise ConfigError(f"unknown photos category {category!r}; known: {', '.join(CATEGORIES)}")
    name, side, region = SOURCES[category]
    clean = _crop(_photo(name), rng, size, side, region)
    image, mask = clean, np.zeros((size, size), bool)
    if defect is not None:
        for _ in range(30):
            target, alpha = _defect(defect, clean, rng, category)
            alpha = np.where(alpha >= ALPHA_CUT, alpha, 0).astype(np.float32)
            mask = alpha > 0
            if mask.mean() >= MIN_MASK_FRACTION:
                break
        image = clean + (target - clean) * alpha[..., None]
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8), mask


# --------------------------------------------------------------------------- the tree


def _rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(category.encode()), zlib.crc32(split.encode()), index])


def read_marker(root: Path) -> dict | None:
    """The ``photos.json`` of a tree written by ``generate``, or None."""
    return read_json_marker(root, MARKER, GENERATOR)


README = """Real photographs with generated defects, written by {generator} version {version} (seed {seed},
{size}x{size} px). Crops of sample photographs shipped in scikit-image's wheel (skimage/data):
brick, grass, gravel (CC0), ihc (no known copyright restrictions), retina (CC0); pasted patches
also from coffee, chelsea (CC0) and astronaut (public domain), as scikit-image's docstrings state.
Defects ({defects}) and their masks are made by bench.photos. MVTec AD layout.
"""


def generate(root: Path, seed: int = 0, categories: list[str] | None = None, n_test: int = 60,
             n_train: int = 20, size: int = 256, progress: bool = True) -> Path:
    """Write the photos tree under ``root`` (missing, empty, or an earlier photos tree, replaced whole); returns ``root``.

    About a third of the ``n_test`` test images per category are anomalous, spread evenly over
    ``DEFECTS``. Files are written under ``<root>/.incomplete`` and moved into place at the end;
    ``photos.json`` is written last, so an interrupted run leaves no tree that looks complete.
    """
    root = Path(root).expanduser()
    categories = list(CATEGORIES if categories is None else categories)
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown or not categories or len(set(categories)) != len(categories):
        raise ConfigError(f"photos categories {', '.join(categories) or '(none)'}: give distinct names of {', '.join(CATEGORIES)}")
    if size < 32 or n_test < 3 or n_train < 0:
        raise ConfigError(f"photos size={size}, n_test={n_test}, n_train={n_train}: need size >= 32, n_test >= 3, n_train >= 0")
    if root.exists() and (not root.is_dir() or (read_marker(root) is None and any(p.name != STAGING for p in root.iterdir()))):
        raise DatasetError(f"{root}: not an empty folder nor a photos tree; refusing to write the photos dataset there")
    photo_dir()  # the clear error before any work
    staging = root / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    n_anomalous = int(round(n_test / 3))
    plan = [(None, i) for i in range(n_test - n_anomalous)] + [(DEFECTS[i % len(DEFECTS)], i // len(DEFECTS)) for i in range(n_anomalous)]
    with tqdm(total=len(categories) * (n_test + n_train), desc="photos dataset", unit="img", disable=not progress) as bar:
        for category in categories:
            cat = staging / category
            jobs = [("train", i, None, i) for i in range(n_train)]
            jobs += [("test", k, defect, i) for k, (defect, i) in enumerate(plan)]
            for split, k, defect, i in jobs:
                image, mask = render(category, defect, _rng(seed, category, split, k), size)
                folder = cat / split / (defect or "good")
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(folder / f"{i:03d}.png", compress_level=1)
                if defect is not None:
                    (cat / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask.astype(np.uint8) * 255).save(cat / "ground_truth" / defect / f"{i:03d}_mask.png")
                bar.update(1)
    old = read_marker(root) or {}
    (root / MARKER).unlink(missing_ok=True)
    for category in set(old.get("categories", [])) | set(categories):
        if category in CATEGORIES:
            shutil.rmtree(root / category, ignore_errors=True)
    for category in categories:
        (staging / category).rename(root / category)
    staging.rmdir()
    info = {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": seed, "size": size, "n_test": n_test,
            "n_train": n_train, "categories": categories, "defects": list(DEFECTS),
            "sources": {c: SOURCES[c][0] for c in categories}}
    (root / "README.txt").write_text(README.format(generator=GENERATOR, version=GENERATOR_VERSION, seed=seed, size=size,
                                                   defects=", ".join(DEFECTS)))
    (root / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return root
