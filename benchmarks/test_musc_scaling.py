"""MuSc's mutual scoring against the set size: time and peak memory, for the README's curve.

Every patch is compared with every patch of every other image, so time grows with the square of
the set size. Memory does not: distances are computed in blocks of about 2^20 entries and reduced
at once; what grows is the table of per-image minima, (B, P, B) floats up to 2^26 entries
(256 MiB; beyond that one query chunk at a time, see ``bench/methods/musc/model.py``). Inputs are random
features of EfficientNet-Lite0's shapes (blocks 4/7/10: 40, 80, 112 channels, strides 8, 16, 16)
at 256 px (a 16×16 grid), or 128 px (8×8) in the small form; MuSc at its defaults (r = 1, 3, 5).
"""
from __future__ import annotations

import pytest
import torch

from bench.methods.musc import MuSc
from bench.records import FeatureSet

SET_SIZES = {"small": (50, 100), "full": (50, 100, 200, 500)}
INPUT_SIZE = {"small": 128, "full": 256}
LAYERS = {"block4": (40, 8), "block7": (80, 16), "block10": (112, 16)}  # channels, stride
SECTION = "MuSc mutual scoring vs set size (defaults: r = 1, 3, 5; 3 layers)"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "set_size" in metafunc.fixturenames:
        metafunc.parametrize("set_size", SET_SIZES[metafunc.config.getoption("--bench-size")])


def lite0_like_features(n: int, input_size: int, device: torch.device) -> FeatureSet:
    g = torch.Generator().manual_seed(n)
    layers = {name: torch.randn(n, c, input_size // s, input_size // s, generator=g).to(device)
              for name, (c, s) in LAYERS.items()}
    return FeatureSet(layers, torch.randn(n, 1280, generator=g).to(device))


@pytest.fixture(scope="module")
def seconds_by_size() -> dict[int, float]:
    return {}


def test_musc_scaling(measure, report, bench_size, device, set_size, seconds_by_size):
    features = lite0_like_features(set_size, INPUT_SIZE[bench_size], device)
    grid = INPUT_SIZE[bench_size] // 16
    run = measure(MuSc().score, features)
    assert run.result.maps.shape == (set_size, grid, grid)
    seconds_by_size[set_size] = run.seconds
    base = SET_SIZES[bench_size][0]
    report.add(SECTION, f"{set_size} images, {grid}x{grid} grid", run.seconds,
               **{"ms/image": 1000 * run.seconds / set_size,
                  f"time / time({base})": run.seconds / seconds_by_size[base] if base in seconds_by_size else None,
                  f"(n/{base})^2": (set_size / base) ** 2,
                  "peak extra MiB": run.mib("cuda" if device.type == "cuda" else "host")})
