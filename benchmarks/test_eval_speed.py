"""``bench eval`` end to end against scikit-learn's pixel AUROC + AP alone, side by side.

The command as a user runs it (a fresh process: start-up, reading every ``.npy`` map and mask PNG,
every metric) on a folder-layout dataset of 600 images of 256² (``--bench-size full``; 3
categories of 200, half of them anomalous) against ``roc_auc_score`` + ``average_precision_score``
on the same pixels already in memory. Target: the whole command ≥ 10× faster. The small form uses
2 categories of 24 images of 64².
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score


def _make_maps():
    """The metrics benchmark's map generator (benchmarks are imported by path, not as a package)."""
    path = Path(__file__).with_name("test_metrics_speed.py")
    spec = importlib.util.spec_from_file_location("bench_metrics_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_maps


make_maps = _make_maps()

SECTION = "bench eval end to end vs sklearn AUROC + AP on pixels in memory"
SIZES = {"small": (2, 24, 64), "full": (3, 200, 256)}  # categories, images per category, side
TARGET = 10


def write_tree(root, maps_root, categories: int, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images, masks and maps of a folder-layout dataset; returns all maps and masks, stacked."""
    all_maps, all_masks = [], []
    for c in range(categories):
        maps, masks = make_maps(n, size, seed=c)
        for i in range(n):
            defect = "defect" if i % 2 else "good"
            if defect == "defect" and not masks[i].any():
                masks[i, size // 2, size // 2] = True
            image = (np.linspace(40, 200, size)[None, :, None] + 10 * maps[i][..., None]).clip(0, 255).astype(np.uint8)
            for folder in (root / f"cat{c}" / "test" / defect, maps_root / f"cat{c}" / "test" / defect):
                folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.repeat(image, 3, axis=2)).save(root / f"cat{c}" / "test" / defect / f"{i:03d}.png")
            np.save(maps_root / f"cat{c}" / "test" / defect / f"{i:03d}.npy", maps[i])
            if defect == "defect":
                (root / f"cat{c}" / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                Image.fromarray(masks[i].astype(np.uint8) * 255).save(
                    root / f"cat{c}" / "ground_truth" / defect / f"{i:03d}_mask.png")
        all_maps.append(maps)
        all_masks.append(masks)
    return np.concatenate(all_maps), np.concatenate(all_masks)


def test_bench_eval_end_to_end_against_sklearn(tmp_path, report, bench_size):
    categories, n, size = SIZES[bench_size]
    maps, masks = write_tree(tmp_path / "data", tmp_path / "maps", categories, n, size)
    command = [sys.executable, "-m", "bench", "eval", "--maps", str(tmp_path / "maps"), "--data-root",
               str(tmp_path / "data"), "--dataset", "folder", "--eval-size", str(size), "--json"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    ours = time.perf_counter() - start
    result = json.loads(done.stdout)

    start = time.perf_counter()
    scores = {"pixel_auroc": roc_auc_score(masks.ravel(), maps.ravel()),
              "pixel_ap": average_precision_score(masks.ravel(), maps.ravel())}
    sklearn = time.perf_counter() - start
    # per category, then the mean (bench's convention): compare one category's values exactly
    first = slice(0, n)
    expected = roc_auc_score(masks[first].ravel(), maps[first].ravel())
    assert abs(result["cat0"]["pixel_auroc"] - expected) < 1e-6
    assert 0.5 < scores["pixel_auroc"] <= 1

    images = categories * n
    report.add(SECTION, f"bench eval ({images} maps + masks of {size}², all metrics, new process)", ours)
    report.add(SECTION, f"sklearn AUROC + AP ({images} maps in memory)", sklearn)
    report.ratio(SECTION, "sklearn AUROC + AP / bench eval end to end", (f"sklearn AUROC + AP ({images} maps in memory)",),
                 f"bench eval ({images} maps + masks of {size}², all metrics, new process)", target=TARGET)
