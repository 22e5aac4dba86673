"""Backbone throughput, as a fraction of this machine's fp32 matmul peak measured in the same run.

Images/s of ``Backbone.features`` (what a run calls) on preprocessed batches of several sizes,
side by side. FLOPs per image are counted analytically with ``torch.utils.flop_counter``
(convolutions, matmuls, attention; 2 FLOPs per multiply-add; elementwise ops and normalisations
are not counted). Peak: a large fp32 matmul. ``% of peak = FLOPs per image × images/s / matmul
FLOP/s``. The ViTs run in fp32 with random
weights (throughput does not depend on the weights; none can be downloaded here).
"""
from __future__ import annotations

import pytest
import torch

import bench.backbones.efficientnet_lite  # noqa: F401 - registers the backbones
import bench.backbones.openclip  # noqa: F401
from bench.interfaces import Backbone
from bench.registry import BACKBONES
from bench.speed import flops_per_image, matmul_peak

# (name, factory options, batch sizes side by side, timed rounds); bench run encodes in batches of 16
CASES = {
    "small": [
        ("efficientnet_lite0", {"input_size": 64}, (1, 4), 2),
        ("ViT-B-32", {"weights": "random", "input_size": 64, "precision": "fp32"}, (1, 4), 2),
    ],
    "full": [
        ("efficientnet_lite0", {}, (1, 4, 16), 5),
        ("ViT-B-16", {"weights": "random", "precision": "fp32"}, (1, 8), 3),
        ("ViT-L-14-336", {"weights": "random", "input_size": 518, "precision": "fp32"}, (1, 2), 1),
    ],
}
MATMUL_SIDE = {"small": 1024, "full": 4096}
TARGET_PERCENT = 70


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        params = [(name, options, batch, rounds) for name, options, batches, rounds in
                  CASES[metafunc.config.getoption("--bench-size")] for batch in batches]
        metafunc.parametrize("case", params, ids=[f"{p[0]}-batch{p[2]}" for p in params])


def section() -> str:
    return f"backbone throughput (fp32, {torch.get_num_threads()} threads)"


@pytest.fixture(scope="module")
def matmul_flops(bench_size: str, device: torch.device, report) -> float:
    """FLOP/s of an n×n fp32 matmul, best of 5 after a warm-up."""
    n = MATMUL_SIDE[bench_size]
    flops = matmul_peak(device, torch.float32, n)
    report.add(section(), f"fp32 matmul {n}x{n} (peak)", 2 * n**3 / flops, **{"GFLOP/s": flops / 1e9})
    return flops


@pytest.fixture(scope="module")
def backbones() -> dict[str, tuple[Backbone, float]]:
    """Each backbone and its FLOPs per image, made once per module, by name."""
    return {}


def test_backbone_throughput(measure, report, backbones, matmul_flops, device, case):
    name, options, batch, rounds = case
    if name not in backbones:
        backbone = BACKBONES.create(name, device=str(device), **options)
        backbones[name] = backbone, flops_per_image(backbone, device)
    backbone, flops = backbones[name]
    size = backbone.input_size
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    run = measure(backbone.features, x, rounds=rounds, warmup=1)
    per_second = batch / run.seconds
    percent = 100 * flops * per_second / matmul_flops
    report.add(section(), f"{name} @{size}, batch {batch}", run.seconds,
               **{"images/s": per_second, "GFLOP/image": flops / 1e9, "GFLOP/s": flops * per_second / 1e9,
                  "% of matmul peak": percent, "target %": TARGET_PERCENT})
