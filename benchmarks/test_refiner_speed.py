"""Cost of the training-free refiners: refine a batch of 16 images at 256 px (coarse maps 16×16).

One call refines the whole batch; divide by ``extra_info["images"]`` for the time per image.
"""
import pytest
import torch

from bench.registry import REFINERS

BATCH, SIZE, GRID = 16, 256, 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread, so the torch refiners compete on equal terms with scipy (single-threaded)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["none", "gaussian", "guided"])
def test_refine_256px(benchmark, name):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=g)
    coarse = torch.rand(BATCH, GRID, GRID, generator=g)
    refiner = REFINERS.create(name, channels={}, image_size=SIZE)
    benchmark.group = "refine 256px"
    benchmark.extra_info["images"] = BATCH
    out = benchmark(lambda: refiner.refine(images, None, coarse))
    assert out.shape == (BATCH, SIZE, SIZE)
