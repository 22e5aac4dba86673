"""Pixel metrics at scale: bench.metrics next to what the field uses, on identical inputs.

Comparison (``--bench-size full``: 500 maps of 256², or ``BENCH_METRICS_N`` maps): our four exact
pixel metrics in one call against scikit-learn's AUROC and AP, anomalib's exact AUPRO (the
``benchmarks`` extra) and the field's 200-threshold AUPRO loop (MuSc, APRIL-GAN, AnomalyCLIP);
every value is checked against ours. Scale: ours alone on a VisA-sized test set, 2,162 maps at
256² and at 518², with the peak memory it adds to its inputs. The small form uses 24 and 64 maps
of 128². Only values are asserted, never times.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, roc_auc_score

from bench.metrics import aupro_binned, pixel_metrics

COMPARE = {"small": (24, 128), "full": (int(os.environ.get("BENCH_METRICS_N", "500")), 256)}
SCALE = {"small": [(64, 128)], "full": [(2162, 256), (2162, 518)]}
EXTRA_MEMORY_TARGET_MIB = 2048


def make_maps(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 maps and bool masks of ``size``², shaped like a patch method's output.

    Maps: a Gaussian field on a 1/14 patch grid upsampled bilinearly, plus pixel noise; every other
    image holds defects (blobs of a second field), which raise its map there. Made block by block,
    so that building the VisA-sized set needs little more memory than the set itself.
    """
    maps = np.empty((n, size, size), np.float32)
    masks = np.empty((n, size, size), bool)
    grid = max(4, size // 14)
    torch_rng = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    def field(b: int) -> np.ndarray:
        coarse = torch.randn(b, 1, grid, grid, generator=torch_rng)
        return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()

    for start in range(0, n, 64):
        stop = min(n, start + 64)
        anomalous = (np.arange(start, stop) % 2 == 1)[:, None, None]
        masks[start:stop] = (field(stop - start) > 1.4) & anomalous
        maps[start:stop] = field(stop - start) + 1.5 * masks[start:stop]
        maps[start:stop] += 0.5 * rng.standard_normal((stop - start, size, size), dtype=np.float32)
    return maps, masks


# ----------------------------------------------------------------------------- the competitors


def sklearn_auroc(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    return {"pixel_auroc": roc_auc_score(masks.ravel(), maps.ravel())}


def sklearn_ap(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    return {"pixel_ap": average_precision_score(masks.ravel(), maps.ravel())}


def anomalib_aupro(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """anomalib's exact AUPRO (the torchmetrics ``_AUPRO`` under its ``AUPRO`` wrapper)."""
    from anomalib.metrics.aupro import _AUPRO

    metric = _AUPRO(fpr_limit=0.3)
    metric.update(torch.from_numpy(maps), torch.from_numpy(masks))
    return {"pixel_aupro": float(metric.compute())}


def field_aupro_loop(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, steps: int = 200) -> dict[str, float]:
    """The repositories' ``cal_pro_score`` loop (regions labelled once, not at every threshold)."""
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
    return {"pixel_aupro_binned": auc((fprs - fprs.min()) / (fprs.max() - fprs.min()), pros[keep])}


def ours_binned(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    return {"pixel_aupro_binned": aupro_binned(maps, masks)}


OURS = "ours: AUROC+AP+F1+AUPRO exact"
COMPETITORS = {
    OURS: pixel_metrics,
    "sklearn AUROC": sklearn_auroc,
    "sklearn AP": sklearn_ap,
    "anomalib AUPRO (exact)": anomalib_aupro,
    "field AUPRO loop (200 thr.)": field_aupro_loop,
    "ours AUPRO binned (200 thr.)": ours_binned,
}
MUST_AGREE = {"sklearn AUROC", "sklearn AP"}  # our metrics equal scikit-learn's to 1e-6


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scale" in metafunc.fixturenames:
        cases = SCALE[metafunc.config.getoption("--bench-size")]
        metafunc.parametrize("scale", cases, ids=[f"{n}x{s}" for n, s in cases])


@pytest.fixture(scope="module")
def compared(bench_size: str) -> tuple[str, np.ndarray, np.ndarray, dict[str, float]]:
    """The comparison set, its section title and our values (all four, and the binned AUPRO)."""
    n, size = COMPARE[bench_size]
    maps, masks = make_maps(n, size)
    return f"pixel metrics vs references ({n} maps of {size}x{size})", maps, masks, \
        pixel_metrics(maps, masks, with_binned_aupro=True)


@pytest.fixture
def capped(measure, memory_cap, report):
    """``capped(section, name, fn, maps, masks)``: ``measure`` within the memory the machine has;
    a MemoryError becomes a report row and fails the test (instead of the OOM killer ending the
    session)."""

    def run(section: str, name: str, fn, maps: np.ndarray, masks: np.ndarray):
        with memory_cap() as cap:
            try:
                return measure(fn, maps, masks)
            except (MemoryError, RuntimeError) as exc:  # torch's CPU allocator raises RuntimeError
                if not isinstance(exc, MemoryError) and "allocate memory" not in str(exc):
                    raise
        report.add(section, name, None, **{"peak extra MiB": f"MemoryError: more than {cap / 2**20:.0f}"})
        pytest.fail(f"{name} needs more than the {cap / 2**30:.1f} GiB this machine has free")

    return run


@pytest.mark.parametrize("name", list(COMPETITORS))
def test_pixel_metrics_vs_references(capped, report, compared, name):
    section, maps, masks, ours = compared
    if name.startswith("anomalib"):  # imported before the clock starts
        pytest.importorskip("anomalib.metrics.aupro", reason="pip install -e '.[benchmarks]'")
    run = capped(section, name, COMPETITORS[name], maps, masks)
    delta = max(abs(v - ours[k]) for k, v in run.result.items())
    columns = {"peak extra MiB": run.mib(), "max |diff| vs ours": delta}
    if name.startswith("ours AUPRO binned"):
        columns["|binned - exact AUPRO|"] = abs(run.result["pixel_aupro_binned"] - ours["pixel_aupro"])
    report.add(section, name, run.seconds, **columns)
    if name == OURS:
        report.ratio(section, "sklearn AUROC + sklearn AP + anomalib AUPRO, over ours (all four)",
                     ("sklearn AUROC", "sklearn AP", "anomalib AUPRO (exact)"), OURS, target=10)
        report.ratio(section, "field AUPRO loop over ours binned (same definition)",
                     ("field AUPRO loop (200 thr.)",), "ours AUPRO binned (200 thr.)")
    if name in MUST_AGREE:
        assert delta <= 1e-6


def test_exact_pixel_metrics_at_scale(capped, report, scale):
    n, size = scale
    maps, masks = make_maps(n, size)
    section, name = "exact pixel metrics at scale (ours, all four in one call)", f"{n} maps of {size}x{size}"
    run = capped(section, name, pixel_metrics, maps, masks)
    report.add(section, name, run.seconds,
               **{"input MiB": (maps.nbytes + masks.nbytes) / 2**20, "peak extra MiB": run.mib(),
                  "target MiB": EXTRA_MEMORY_TARGET_MIB, "pixel_auroc": run.result["pixel_auroc"],
                  "pixel_aupro": run.result["pixel_aupro"]})
