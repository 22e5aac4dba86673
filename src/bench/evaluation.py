"""``bench eval``: metrics of anomaly maps produced elsewhere, read from ``.npy`` files."""
from __future__ import annotations

import csv
import math
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import BenchError, first_few
from bench.imageio import image_size, read_mask
from bench.interfaces import Dataset
from bench.metrics import compute_metrics
from bench.records import Sample

SCORES_FILE = "image_scores.csv"  # optional, per category: columns image (<defect>/<name>), score
READ_THREADS = min(8, os.cpu_count() or 1)  # threads that read and decode maps and masks
T, R = TypeVar("T"), TypeVar("R")


def eval_masks(samples: list[Sample], size: int, threshold: float) -> torch.Tensor | None:
    """Ground truth at the evaluation size: bilinear resize, then ``> threshold``; None without masks.

    A normal image without a mask file is all zeros at ``size`` directly (its image is not
    decoded); the mask files are decoded in parallel threads.
    """
    if any(s.mask_path is None and s.label != 0 for s in samples):
        return None
    files = [s for s in samples if s.mask_path is not None]
    decoded = dict(zip(files, parallel_map(file_mask, files)))
    if any(m is None for m in decoded.values()):
        return None
    out = torch.full((len(samples), size, size), 0.0 > threshold)  # normal images without a mask file
    rows = [i for i, s in enumerate(samples) if s in decoded]
    if rows:
        out[rows] = resize_each([decoded[samples[i]] for i in rows], size) > threshold
    lost = [str(samples[i].mask_path) for i in rows if decoded[samples[i]].any() and not out[i].any()]
    if lost:  # their defects are smaller than a pixel at this size: they add no defect pixel
        warnings.warn(f"{len(lost)} mask(s) have no defect pixel once resized to the evaluation size {size} "
                      f"(threshold {threshold}); raise the evaluation size: {first_few(lost)}", EmptyMaskWarning,
                      stacklevel=2)
    return out


class EmptyMaskWarning(UserWarning):
    """Anomalous test images whose mask has no defect pixel."""


def warn_empty_masks(dataset: Dataset, categories: list[str]) -> list[Path]:
    """The mask files of ``categories``' anomalous test images that have no defect pixel, named in
    one warning. Such an image counts as anomalous for the image metrics and adds no defect pixel
    to the pixel metrics; MVTec-style sets may hold such images on purpose, so they are not
    refused, but the user must know. Called before any work: every mask is decoded once here."""
    samples = [s for c in categories if dataset.category_has_masks(c) for s in dataset.test(c)
               if s.label == 1 and s.mask_path is not None]
    empty = [s.mask_path for s, mask in zip(samples, parallel_map(file_mask, samples)) if not mask.any()]
    if empty:
        warnings.warn(f"{len(empty)} anomalous test image(s) have a mask with no defect pixel (labelled anomalous, "
                      f"no anomalous pixel): {first_few(empty)}", EmptyMaskWarning, stacklevel=2)
    return empty


def file_mask(sample: Sample) -> np.ndarray | None:
    """``sample.mask``, without decoding the image when it is not decoded yet: the size the mask is
    checked against comes from the image file's header."""
    if sample.mask_path is None or "image" in vars(sample):
        return sample.mask
    return read_mask(sample.mask_path, image_size(sample.path), strict=sample.mask_strict)


def parallel_map(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """``[fn(x) for x in items]`` on a few threads (file reading and decoding release the GIL);
    the first exception is raised as it is, as in the serial form."""
    if len(items) < 2 * READ_THREADS:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        return list(pool.map(fn, items))


def resize_each(arrays: list[np.ndarray], size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """H×W arrays (sizes may differ: a category can mix image sizes) → ``(N, size, size)`` of
    ``dtype``, bilinear.

    Arrays already at ``size`` are copied as they are (bilinear at the same size is the identity);
    the others are resized in one batch per distinct shape.
    """
    out = torch.empty((len(arrays), size, size), dtype=dtype)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, array in enumerate(arrays):
        by_shape.setdefault(np.shape(array), []).append(i)
    for shape, rows in by_shape.items():
        x = torch.from_numpy(np.stack([np.asarray(arrays[i]) for i in rows])).to(dtype)
        if shape != (size, size):
            x = F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        out[rows] = x
    return out


def order_preserving_float32(maps: np.ndarray) -> np.ndarray:
    """``maps`` as float32 values in the same order, ties kept and no two values merged.

    The pixel metrics compare float32 scores; every one of them depends on the scores only
    through their order (thresholds swept over the scores), so float64 maps whose values float32
    would merge (``0.5`` and ``0.5 + 1e-9``) are scored exactly through their ranks, written as
    increasing positive normal float32 values. Maps that float32 holds exactly are returned cast.
    """
    if maps.dtype == np.float32:
        return maps
    with np.errstate(over="ignore"):  # values beyond float32 become inf here, and are then ranked
        narrow = maps.astype(np.float32)
    if np.array_equal(narrow.astype(maps.dtype), maps):
        return narrow
    _, rank = np.unique(maps, return_inverse=True)
    smallest_normal = np.uint32(0x00800000)  # bit pattern of float32's smallest normal value
    return (rank.reshape(maps.shape).astype(np.uint32) + smallest_normal).view(np.float32)


def check_options(size: int, mask_threshold: float) -> None:
    """``bench eval``'s options, checked before any map is read (the rules of ``bench run``)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise BenchError(f"--eval-size {size}: must be a positive integer (the side, in pixels, maps and masks "
                         "are resized to)")
    if not 0 < mask_threshold < 1:
        raise BenchError(f"--mask-threshold {mask_threshold}: must be in (0, 1) (resized masks are binarised "
                         "at this value)")


def check_aspect(data: np.ndarray, image_shape: tuple[int, int], path: Path) -> None:
    """A map has its image's aspect ratio (to within a pixel), or is square: the maps of a method
    that resized the image to a square input, as ``bench run`` does. Anything else would be
    stretched onto the image silently."""
    h, w = data.shape
    height, width = image_shape
    if h == w or abs(h - w * height / width) <= 1:
        return
    raise BenchError(f"{path}: map is {w}x{h} but its image is {width}x{height}; expected a map with the "
                     "image's aspect ratio (or a square map, from a square input)")


def evaluate(scores: np.ndarray, labels: np.ndarray, maps: torch.Tensor, masks: torch.Tensor | None, groups: list[np.ndarray]) -> dict[str, float]:
    """Metrics over the whole stream, and (suffix ``_g2k``) over groups 2..k only."""
    def at(index: np.ndarray) -> dict[str, float]:
        pixel = (maps[index].numpy(), masks[index].numpy()) if masks is not None else (None, None)
        return compute_metrics(scores[index], labels[index], *pixel)

    metrics = at(np.arange(len(labels)))
    if len(groups) > 1:
        later = np.sort(np.concatenate(groups[1:]))
        metrics.update({f"{k}_g2k": v for k, v in at(later).items()})
    return metrics


def read_map(path: Path, precise: bool = False, scales: MapScales | None = None) -> np.ndarray:
    """One H×W float32 map, with errors that name the file; ``precise``: float64 (and wide
    integer) maps stay float64, as ``bench eval`` scores them; ``scales``: the category's maps read
    so far, which this one must share a value scale with."""
    if not path.is_file():
        raise BenchError(f"missing map {path}: expected one .npy per test image as <category>/test/<defect>/<name>.npy")
    with path.open("rb") as handle:
        magic = handle.read(6)
    if magic != b"\x93NUMPY":
        raise BenchError(f"{path}: not a .npy file (no NumPy header); save each map with numpy.save")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path}: not a readable .npy array ({exc})") from None
    data = np.squeeze(data)
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise BenchError(f"{path}: expected a 2-D real numeric map (H×W), got shape {data.shape} of {data.dtype}")
    if data.size == 0:
        raise BenchError(f"{path}: the map is empty ({data.shape[1]}x{data.shape[0]} pixels)")
    if scales is not None:
        scales.check(data.dtype, path)
    # float16/float32 and small integers are exact in float32; wider values stay float64 if ``precise``
    wide = np.result_type(data.dtype, np.float32) != np.float32
    with np.errstate(over="ignore"):
        data = data.astype(np.float64 if wide and precise else np.float32)
    if not np.isfinite(data).all():
        beyond = " (or values beyond float32's range)" if wide and not precise else ""
        raise BenchError(f"{path}: the map holds NaN or infinite values{beyond}")
    return data


class MapScales:
    """The value scale of one category's maps: floating point (any width), or one integer type.

    Pixel metrics pool the pixels of all maps, so maps saved as uint8 0..255 next to float 0..1
    ones would rank every pixel of the first above the second (pixel AUROC 93.6 -> 71.3); such a
    mix is refused, naming a map of each kind."""

    def __init__(self) -> None:
        self.first: tuple[str, Path] | None = None
        self.lock = threading.Lock()  # maps are read on several threads

    def check(self, dtype: np.dtype, path: Path) -> None:
        kind = "floating point" if np.issubdtype(dtype, np.floating) else str(dtype)
        with self.lock:
            if self.first is None:
                self.first = (kind, path)
        if self.first[0] != kind:
            raise BenchError(f"{self.first[1]} ({self.first[0]}) and {path} ({kind}): the maps of one category "
                             "mix value types, so their values are on different scales; save them all as one type")


def read_scores(path: Path) -> dict[str, float]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # a spreadsheet's byte-order mark is not a column name
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"image", "score"} <= set(reader.fieldnames):
                found = ",".join(reader.fieldnames or []) or "nothing"
                raise BenchError(f"{path}: expected the columns image,score (image as <defect>/<name>), found {found}")
            scores, lines = {}, {}
            for line, row in enumerate(reader, start=2):
                if lines.setdefault(row["image"], line) != line:
                    raise BenchError(f"{path}, lines {lines[row['image']]} and {line}: image {row['image']!r} is "
                                     "scored twice; expected one row per image")
                try:
                    scores[row["image"]] = value = float(row["score"])
                except (TypeError, ValueError):
                    raise BenchError(f"{path}, line {line}: score {row['score']!r} is not a number") from None
                if not np.isfinite(value):
                    raise BenchError(f"{path}, line {line}: score {row['score']!r} is not finite")
            return scores
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BenchError(f"{path}: not a readable CSV file ({exc})") from None


class UnusedInputWarning(UserWarning):
    """Maps or image scores that match no test image (``bench eval`` ignores them)."""


def warn_unused(items: list[object], what: str) -> None:
    """One warning naming the first few ``items`` that ``bench eval`` ignores, and their count: a
    map saved under another name or defect folder than its image's is otherwise lost silently."""
    if items:
        warnings.warn(f"{len(items)} {what} and are ignored: {first_few(items)}", UnusedInputWarning, stacklevel=2)


def evaluate_category(samples: list[Sample], folder: Path, size: int, mask_threshold: float, has_masks: bool) -> dict[str, float]:
    """Metrics of one category's maps resized to ``size`` at their own precision (float64 maps
    stay float64); image scores from the CSV or the map maximum."""
    scales = MapScales()
    paths = {sample: folder / "test" / sample.defect / f"{Path(sample.path).stem}.npy" for sample in samples}
    warn_unused(sorted(set((folder / "test").rglob("*.npy")) - set(paths.values())), "map file(s) match no test image")

    def read(sample: Sample) -> np.ndarray:
        path = paths[sample]
        array = read_map(path, precise=True, scales=scales)
        check_aspect(array, image_size(sample.path), path)
        return array

    arrays = parallel_map(read, samples)
    wide = any(a.dtype == np.float64 for a in arrays)
    maps = resize_each(arrays, size, torch.float64 if wide else torch.float32)
    scores_path = folder / SCORES_FILE
    if scores_path.is_file():
        given = read_scores(scores_path)
        keys = {s.key for s in samples}
        warn_unused(sorted(set(given) - keys), f"row(s) of {scores_path} name no test image")
        missing = [s.key for s in samples if s.key not in given]
        if missing:
            raise BenchError(f"{scores_path}: no score for {first_few(missing)}")
        scores = np.array([given[s.key] for s in samples])
    else:
        scores = maps.flatten(1).max(1).values.numpy()
    labels = np.array([s.label for s in samples])
    if not has_masks:
        return compute_metrics(scores, labels)
    masks = eval_masks(samples, size, mask_threshold)
    return compute_metrics(scores, labels, order_preserving_float32(maps.numpy()), masks.numpy())


def physical_memory() -> int | None:
    """Bytes of RAM on this machine; None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def check_memory(n_images: int, size: int) -> None:
    """One error before any map is read when a category's maps and masks at ``size`` cannot fit in
    RAM (float32 maps, their resize source and boolean masks: ~9 bytes a pixel). Checked here because
    whether a huge allocation fails, and with which message, depends on the OS's overcommit policy."""
    need, have = 9 * n_images * size * size, physical_memory()
    if have is not None and need > have:
        raise BenchError(f"--eval-size {size}: out of memory; {n_images} maps at {size}x{size} need "
                         f"~{need / 2**30:,.0f} GiB, this machine has {have / 2**30:,.0f} GiB")


def evaluate_maps(dataset: Dataset, categories: list[str], maps_root: Path, size: int, mask_threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Per-category metrics and their unweighted mean (key ``mean``) of the metrics every category
    has (a category without masks has image metrics only)."""
    check_options(size, mask_threshold)
    check_memory(max(len(dataset.test(c)) for c in categories), size)
    maps_root = Path(maps_root)
    if not maps_root.is_dir():
        raise BenchError(f"--maps {maps_root}: not a directory")
    for category in categories:
        if not (maps_root / category).is_dir():
            raise BenchError(f"--maps {maps_root}: no folder for category {category!r} (expected {maps_root / category})")
    known = set(dataset.categories())
    warn_unused(sorted(p for p in maps_root.iterdir() if p.is_dir() and p.name not in known),
                "folder(s) of --maps name no category of the dataset")
    warn_empty_masks(dataset, categories)
    results = {}
    for category in categories:
        folder = maps_root / category
        results[category] = evaluate_category(dataset.test(category), folder, size, mask_threshold,
                                              dataset.category_has_masks(category))
    keys = [k for k in results[categories[0]] if all(k in results[c] for c in categories)]  # pixel metrics: masks
    results["mean"] = {k: float(np.mean([results[c][k] for c in categories])) for k in keys}
    return results


def json_safe(value):
    """NaN / infinity (undefined metrics) as None, so that ``bench eval --json`` is strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
