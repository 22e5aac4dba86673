"""Inputs shared by the refiner tests (tests/refiners) and the refiner speed benchmark.

A plain module rather than fixtures, so that ``benchmarks/`` can import it too: pytest's
``pythonpath = ["tests"]`` makes it importable as ``refiner_inputs`` from both.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from bench.records import FeatureSet, RefineBatch
from bench.registry import REFINERS

Layers = dict[str, tuple[int, int]]  # feature layer name -> (channels, side)

# Input specs: (layers, grid of the coarse map, image size).
CNN_LIKE = ({"a": (8, 8), "b": (16, 4)}, 8, 64)  # a coarser layer than the grid
VIT_LIKE = ({"l1": (24, 7), "l2": (24, 7)}, 7, 56)  # grid 7: not a power of two
ODD_RATIO = ({"a": (16, 18), "b": (24, 9)}, 9, 70)  # image/grid = 7.8, a finer layer than the grid

# Small widths of each trainable refiner, for tests about plumbing rather than capacity (fast on 2 cores).
SMALL = {
    "ard": dict(stem_channels=32, ar_channels=(16, 8), encoder_channels=(8, 8, 16), stem_anomaly_channels=8),
    "destseg": dict(width=16, res_blocks=1),
    "realnet": dict(widths=(16, 8, 8, 4)),
}


def one_intra_op_thread() -> Iterator[None]:
    """Body of a module fixture (``yield from`` it): one intra-op torch thread while the module runs.

    On a shared 2-core machine 2 threads under load run ~10× slower, and with one thread the torch
    refiners compete on equal terms with scipy (single-threaded) in the speed benchmark.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_refiner(name: str, layers: Layers, size: int, **options: object):
    """A registered refiner built for ``layers`` (name -> (channels, side)) and ``size`` px images."""
    return REFINERS.create(name, channels={k: c for k, (c, _) in layers.items()}, image_size=size, **options)


def images_and_coarse(n: int, size: tuple[int, int], grid: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(n,3,*size)`` images and ``(n,*grid)`` coarse maps in [0, 1)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *size, generator=g), torch.rand(n, *grid, generator=g)


def make_batch(n: int, size: int, layers: Layers, grid: int, seed: int = 0) -> RefineBatch:
    """Random inputs with a rectangular mask per image."""
    g = torch.Generator().manual_seed(seed)
    feats = FeatureSet({k: torch.randn(n, c, s, s, generator=g) for k, (c, s) in layers.items()}, torch.randn(n, 4, generator=g))
    masks = torch.zeros(n, size, size)
    masks[:, size // 4 : size // 2, size // 3 : size // 2] = 1
    coarse = 0.1 + 0.5 * torch.rand(n, grid, grid, generator=g)
    return RefineBatch(torch.randn(n, 3, size, size, generator=g), feats, coarse, masks)


def bump_task(n: int = 16, size: int = 64, grid: int = 8, seed: int = 0) -> RefineBatch:
    """A square defect per image with a Gaussian bump of the coarse map over it; features are noise
    (layers as CNN_LIKE: ``a`` 8 channels at the grid, ``b`` 16 at half of it)."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size)
    yy, xx = torch.meshgrid(torch.arange(grid) + 0.5, torch.arange(grid) + 0.5, indexing="ij")
    coarse = 0.1 + 0.05 * torch.rand(n, grid, grid, generator=g)
    for i in range(n):
        s = int(torch.randint(12, 25, (1,), generator=g))
        y, x = (int(v) for v in torch.randint(0, size - s, (2,), generator=g))
        masks[i, y : y + s, x : x + s] = 1
        cy, cx, r = (y + s / 2) * grid / size, (x + s / 2) * grid / size, s * grid / size / 2
        coarse[i] += 0.5 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    feats = FeatureSet(
        {"a": torch.randn(n, 8, grid, grid, generator=g), "b": torch.randn(n, 16, grid // 2, grid // 2, generator=g)},
        torch.randn(n, 4, generator=g),
    )
    return RefineBatch(torch.randn(n, 3, size, size, generator=g), feats, coarse, masks)
