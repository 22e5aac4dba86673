"""EfficientNet-Lite0 levers side by side: memory layout, precision, batch size.

Images/s of the network's feature pass (what ``Backbone.features`` runs: taps and head, BatchNorm
folded) at 256 px, as a share of this machine's fp32 matmul peak measured in the same run, for
NCHW vs channels_last, fp32 vs bf16 autocast (fp16 on CUDA), and batch sizes 1 to 32. The bf16
rows also give the worst cosine similarity of the tapped features to fp32 (per image and layer):
the bar for a default is 0.9999. ImageNet weights (the demo's).
"""
from __future__ import annotations

import contextlib
import itertools

import pytest
import torch
import torch.nn.functional as F

from bench.registry import BACKBONES
from bench.speed import flops_per_image, matmul_peak

SIZES = {"small": (64, (1, 4), 2), "full": (256, (1, 4, 16, 32), 5)}  # input, batches, rounds
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
PRECISIONS = ("fp32", "half")
SECTION = "EfficientNet-Lite0 levers (share of the fp32 matmul peak)"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "lever" in metafunc.fixturenames:
        batches = SIZES[metafunc.config.getoption("--bench-size")][1]
        params = list(itertools.product(LAYOUTS, PRECISIONS, batches))
        metafunc.parametrize("lever", params, ids=[f"{a}-{b}-batch{c}" for a, b, c in params])


@pytest.fixture(scope="module")
def setting(bench_size: str, device: torch.device, report):
    """The backbone, its FLOPs per image, the fp32 matmul peak and the half-precision dtype."""
    size = SIZES[bench_size][0]
    backbone = BACKBONES.create("efficientnet_lite0", input_size=size, device=str(device))
    peak = matmul_peak(device, torch.float32, 4096 if bench_size == "full" else 1024)
    report.add(SECTION, "fp32 matmul (peak)", None, **{"GFLOP/s": peak / 1e9})
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    return backbone, flops_per_image(backbone, device), peak, half


def feature_pass(backbone, x: torch.Tensor, layout: torch.memory_format, dtype: torch.dtype | None):
    """The tapped maps and head of ``backbone`` on ``x`` (as ``features`` runs them), in ``layout``."""
    autocast = torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        maps, _head = backbone.model.forward_features(x.contiguous(memory_format=layout),
                                                     set(backbone._taps.values()), head=True)
    return [maps[i].float() for i in sorted(backbone._taps.values())]


def worst_cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return min(float(F.cosine_similarity(x.flatten(1), y.flatten(1)).min()) for x, y in zip(a, b))


def test_efficientnet_levers(measure, report, setting, device, bench_size, lever):
    layout_name, precision, batch = lever
    backbone, flops, peak, half = setting
    layout = LAYOUTS[layout_name]
    backbone.model.to(memory_format=layout)
    size = backbone.input_size
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    dtype = half if precision == "half" else None
    run = measure(feature_pass, backbone, x, layout, dtype, rounds=SIZES[bench_size][2], warmup=1)
    per_second = batch / run.seconds
    columns = {"images/s": per_second, "% of matmul peak": 100 * flops * per_second / peak}
    if dtype is not None:
        columns["worst cosine to fp32"] = worst_cosine(run.result, feature_pass(backbone, x, layout, None))
    report.add(SECTION, f"{layout_name}, {'fp32' if dtype is None else str(dtype).split('.')[-1]}, batch {batch}",
               run.seconds, **columns)
    backbone.model.to(memory_format=torch.channels_last)  # as the backbone keeps it
