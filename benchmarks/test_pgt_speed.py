"""PGT's dominant cost, ARD training, under each speed lever, side by side.

One ARD ``fit`` on a demo-sized group (the EfficientNet-Lite0 shapes of the embedded default:
256 px images, 16×16 coarse grid, blocks 4/7/10) per lever: the default (fp32, NCHW),
channels_last, bf16 autocast (ARD's ``precision`` option), and fewer but larger steps (the same
images seen: ``steps × batch_size`` constant). The bf16 and fp32 matmul rows check what bf16 is
worth on this machine before anything relies on it. Ratios: time of each lever / the default.
"""
from __future__ import annotations

import pytest
import torch

from bench.records import FeatureSet, RefineBatch
from bench.registry import REFINERS
from bench.speed import best_seconds

SECTION = "PGT: one ARD fit per lever (demo shapes)"
CHANNELS = {"block4": (40, 32), "block7": (80, 16), "block10": (112, 16)}  # channels, grid side at 256 px
SIZES = {"small": (64, 2, 8), "full": (256, 8, 32)}  # image side, steps of the default, group images
LEVERS = {  # name: ARD options on top of the default's
    "default (fp32, NCHW)": {},
    "channels_last": {"channels_last": True},
    "bf16 autocast": {"precision": "bf16"},
    "half the steps, twice the batch": {"halve_steps": True},
}


def group(size: int, n: int) -> RefineBatch:
    gen = torch.Generator().manual_seed(0)
    scale = size / 256
    layers = {k: torch.randn(n, c, max(2, int(g * scale)), max(2, int(g * scale)), generator=gen)
              for k, (c, g) in CHANNELS.items()}
    grid = max(2, int(16 * scale))
    return RefineBatch(images=torch.randn(n, 3, size, size, generator=gen),
                       features=FeatureSet(layers=layers, embedding=torch.randn(n, 8, generator=gen)),
                       coarse=torch.rand(n, grid, grid, generator=gen),
                       masks=(torch.rand(n, size, size, generator=gen) > 0.9).float())


@pytest.mark.parametrize("lever", list(LEVERS))
def test_ard_fit_levers(measure, report, device, bench_size, lever):
    size, steps, n = SIZES[bench_size]
    options = {"channels_last": False, "precision": "fp32", **LEVERS[lever]}
    batch_size = 8
    if options.pop("halve_steps", False):
        steps, batch_size = steps // 2, 2 * batch_size
    refiner = REFINERS.create("ard", channels={k: c for k, (c, _) in CHANNELS.items()}, image_size=size,
                              device=str(device), steps=steps, batch_size=batch_size, **options)
    run = measure(refiner.fit, group(size, n), rounds=1)
    report.add(SECTION, lever, run.seconds, steps=steps, batch=batch_size, **{"ms/step": 1000 * run.seconds / steps})
    if lever != "default (fp32, NCHW)":
        report.ratio(SECTION, f"{lever} / default", (lever,), "default (fp32, NCHW)")


def test_bf16_matmul_against_fp32(report, device, bench_size):
    n = 512 if bench_size == "small" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a16, b16 = a.bfloat16(), b.bfloat16()
    for name, x, y in (("fp32 matmul", a, b), ("bf16 matmul", a16, b16)):
        seconds = best_seconds(lambda x=x, y=y: torch.mm(x, y), device, rounds=3)
        report.add(SECTION, f"{name} {n}x{n}", seconds, **{"GFLOP/s": 2 * n**3 / seconds / 1e9})
    report.ratio(SECTION, "bf16 / fp32 matmul time", (f"bf16 matmul {n}x{n}",), f"fp32 matmul {n}x{n}")
