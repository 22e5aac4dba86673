"""Speed of bench.metrics next to what the field uses, on identical inputs.

Run: pytest benchmarks/test_metrics_speed.py --benchmark-only
Size: BENCH_METRICS_N maps of 256 x 256 (default 100; MVTec AD's largest category has 167 test
images, VisA's 200, a whole VisA test split 2,162). Measurements only: nothing here asserts a time.
"""

import os

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, roc_auc_score

from bench.metrics import aupro, aupro_binned, pixel_metrics

N = int(os.environ.get("BENCH_METRICS_N", "100"))
SIZE = 256


@pytest.fixture(scope="module")
def data():
    """Smooth maps with blob-shaped defects in about half of the images (fixed seed)."""
    rng = np.random.default_rng(0)
    smooth = ndimage.gaussian_filter(
        rng.normal(size=(N, SIZE, SIZE)).astype(np.float32), sigma=(0, 6, 6)
    )
    masks = smooth > np.quantile(smooth, 0.97)
    masks[: N // 2] = False
    maps = rng.random((N, SIZE, SIZE), dtype=np.float32) + 0.5 * masks + 20 * smooth
    return maps.astype(np.float32), masks  # float32, as methods produce them


def field_aupro_loop(maps, masks, fpr_limit=0.3, steps=200):
    """The repositories' cal_pro_score loop (regions labelled once, not at every threshold)."""
    regions = []
    for m in masks:
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions.append([np.nonzero(lab == r) for r in range(1, n + 1)])
    inverse = ~masks
    lo, hi = maps.min(), maps.max()
    pros, fprs = [], []
    for th in np.arange(lo, hi, (hi - lo) / steps):
        binary = maps > th
        pro = [binary[i][c].sum() / len(c[0]) for i, rs in enumerate(regions) for c in rs]
        pros.append(np.mean(pro))
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < fpr_limit
    fprs = fprs[keep]
    return auc((fprs - fprs.min()) / (fprs.max() - fprs.min()), pros[keep])


def sklearn_auroc_ap(maps, masks):
    y, s = masks.ravel(), maps.ravel()
    return roc_auc_score(y, s), average_precision_score(y, s)


def _run(benchmark, group, fn, *args):
    benchmark.group = f"{group} ({N} x {SIZE}x{SIZE})"
    return benchmark.pedantic(fn, args=args, rounds=1, iterations=1)


def test_pixel_ours_all_four_metrics(benchmark, data):
    out = _run(benchmark, "pixel AUROC+AP", pixel_metrics, *data)
    benchmark.extra_info.update(out)


def test_pixel_sklearn_auroc_ap(benchmark, data):
    auroc, ap = _run(benchmark, "pixel AUROC+AP", sklearn_auroc_ap, *data)
    benchmark.extra_info.update(pixel_auroc=auroc, pixel_ap=ap)


def test_aupro_ours_exact(benchmark, data):
    benchmark.extra_info["aupro"] = _run(benchmark, "AUPRO", aupro, *data)


def test_aupro_ours_binned(benchmark, data):
    benchmark.extra_info["aupro"] = _run(benchmark, "AUPRO", aupro_binned, *data)


def test_aupro_field_200_threshold_loop(benchmark, data):
    benchmark.extra_info["aupro"] = _run(benchmark, "AUPRO", field_aupro_loop, *data)
