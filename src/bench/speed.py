"""Speed measurement shared by the benchmarks and the GPU check: matmul peak, model FLOPs, timing.

Throughput is reported as a share of the device's own matmul peak measured in the same process,
so numbers from machines of different speed (and from a busy shared machine) stay comparable.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.interfaces import Backbone


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA work (timings of asynchronous kernels); a no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], object], device: torch.device | str, rounds: int = 3, warmup: int = 1) -> float:
    """Fastest of ``rounds`` timed calls after ``warmup`` untimed ones (device work included)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(max(1, rounds)):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak(device: torch.device | str, dtype: torch.dtype = torch.float32, n: int = 4096, rounds: int = 5) -> float:
    """FLOP/s of an ``n×n`` matmul in ``dtype`` on ``device``: the peak that throughput is a share of."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / best_seconds(lambda: torch.mm(a, b), device, rounds=rounds)


def flops_per_image(backbone: Backbone, device: torch.device | str) -> float:
    """Analytic FLOPs of ``backbone.features`` on one image (2 per multiply-add; convolutions,
    matmuls, attention; elementwise ops and normalisations are not counted). The fused attention
    kernel of ``nn.MultiheadAttention`` is invisible to the counter, so it counts with that fast
    path off (the same arithmetic, spelled out in matmuls)."""
    x = torch.zeros(1, 3, backbone.input_size, backbone.input_size, device=device)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            backbone.features(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return float(counter.get_total_flops())
