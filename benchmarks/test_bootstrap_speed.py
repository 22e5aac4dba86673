"""Cost of the paired bootstrap next to the exact metrics it accompanies, on the same unit.

One unit of the demo at full size (120 maps of 256², 4 PGT groups; ``--bench-size small``: 24 maps
of 64²): ``bench.evaluation.evaluate`` (the exact metrics a unit logs: whole stream and groups
2..k) against ``bench.bootstrap.unit_statistics`` (per-image histograms, 1000 resamples for both
scopes, per-group metrics). Target: the bootstrap costs at most 10% of the exact metrics, i.e.
the ratio below is at least 10x. Also reported: the binned metrics' error against the exact ones.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.bootstrap import RESAMPLES, unit_statistics
from bench.evaluation import evaluate

SIZES = {"small": (24, 64), "full": (120, 256)}


def unit_maps(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Maps as a unit holds them: a 16x16 patch grid upsampled bilinearly, raised on rectangular
    defects in a third of the images (the demo's share of anomalous images)."""
    rng = np.random.default_rng(seed)
    grid = torch.from_numpy(rng.random((n, 1, 16, 16)).astype(np.float32))
    maps = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    masks = np.zeros((n, size, size), bool)
    for i in range(n // 3):
        y, x = rng.integers(0, size * 3 // 4, 2)
        masks[i, y : y + rng.integers(size // 32 + 1, size // 4), x : x + rng.integers(size // 32 + 1, size // 4)] = True
    return (maps + 0.3 * masks * rng.random((n, 1, 1))).astype(np.float32), masks


EXACT = "exact metrics (evaluate: stream + groups 2..k)"
BOOTSTRAP = f"bootstrap, {RESAMPLES} resamples x 2 scopes, + per-group metrics"


@pytest.fixture(scope="module")
def unit(bench_size):
    n, size = SIZES[bench_size]
    maps, masks = unit_maps(n, size)
    labels = masks.reshape(n, -1).any(1).astype(int)
    groups = np.array_split(np.random.default_rng(0).permutation(n), 4)
    section = f"paired bootstrap vs exact metrics (one unit: {n} maps of {size}x{size}, 4 groups)"
    return section, maps.reshape(n, -1).max(1), labels, maps, masks, groups


@pytest.mark.parametrize("name", [EXACT, BOOTSTRAP])
def test_bootstrap_cost_next_to_the_exact_metrics(measure, report, unit, name):
    section, scores, labels, maps, masks, groups = unit
    if name == EXACT:
        run = measure(lambda: evaluate(scores, labels, torch.from_numpy(maps), torch.from_numpy(masks), groups), rounds=3)
        report.add(section, name, run.seconds)
        return
    run = measure(lambda: unit_statistics(scores, labels, maps, masks, groups, 0, "c", RESAMPLES), rounds=3)
    exact = evaluate(scores, labels, torch.from_numpy(maps), torch.from_numpy(masks), groups)
    error = max(abs(float(v[0]) - exact[k]) for k, v in run.result.replicates.items() if k.startswith("pixel"))
    report.add(section, name, run.seconds, **{"max |binned - exact| (points)": 100 * error})
    report.ratio(section, "exact metrics over bootstrap (target: bootstrap <= 10% of exact)", (EXACT,), BOOTSTRAP,
                 target=10)
    assert error < 0.02
