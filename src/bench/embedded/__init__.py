"""The embedded default dataset: procedural industrial images with pixel-exact defect masks.

A core module (the default run needs it before any plugin is looked up); the ``synthetic``
dataset plugin (``bench.datasets.synthetic``) only reads the trees it writes.

``generate(root, seed)`` writes an MVTec-layout tree (docs/design.md, "The embedded dataset")::

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
(``bench/synth``: Perlin-shaped masks, textures, cut-paste): only geometric primitives,
polylines and harmonic blobs are used here, so no refiner can score well by learning this recipe.

Every image's pixels depend only on (seed, category, split, index, size): generating a subset of
the categories gives the same images for those categories.
"""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from bench.data import read_json_marker
from bench.errors import ConfigError, DatasetError
from bench.locking import file_lock

from ._defects import DEFECT_FUNCTIONS
from ._draw import _grid
from ._pcb import _pcb
from ._scenes import Scene, _fabric, _nut, _pill, _tile, _wood

# The generator's name in synthetic.json; kept from the module's first home so that trees written
# before the move are still recognised (and regenerating them gives the same bytes).
GENERATOR = "bench.datasets.synthetic"
GENERATOR_VERSION = 1
MARKER = "synthetic.json"
STAGING = ".incomplete"
SEED = 0  # the embedded default is one fixed dataset, whatever the run's seed
N_TEST = 120  # test images per category (about a third anomalous)
N_TRAIN = 30  # normal training images per category
SIZE = 256  # image side in pixels
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


RENDERERS: dict[str, Callable[[np.random.Generator, int], Scene]] = {
    "fabric": _fabric, "wood": _wood, "tile": _tile, "nut": _nut, "pill": _pill, "pcb": _pcb,
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


def generate(root: Path, seed: int = SEED, categories: list[str] | None = None, n_test: int = N_TEST,
             n_train: int = N_TRAIN, size: int = SIZE, progress: bool = True) -> Path:
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
    return read_json_marker(root, MARKER, GENERATOR)


def embedded_root(out: Path) -> Path:
    """Where a run with results folder ``out`` keeps the embedded default: ``<out>/data/synthetic``."""
    return Path(out) / "data" / "synthetic"


def ensure_embedded(out: Path, progress: bool = True) -> Path:
    """The embedded default under ``out``, written on first use (a complete tree is reused as it is).

    Two runs starting on one ``out`` at once write it once: the second waits on a lock next to the
    tree, then finds it complete.
    """
    root = embedded_root(out)
    if not (root / MARKER).is_file():
        with file_lock(root.parent / f".{root.name}.lock"):
            if not (root / MARKER).is_file():
                generate(root, seed=SEED, progress=progress)
    return root
