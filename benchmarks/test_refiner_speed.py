"""Cost of the training-free refiners: refine a batch of 16 images at 256 px (coarse maps 16×16).

One call refines the whole batch; divide by ``extra_info["images"]`` for the time per image.
"""
import pytest

from bench.registry import REFINERS
from refiner_inputs import images_and_coarse, one_intra_op_thread

BATCH, SIZE, GRID = 16, 256, 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread, so the torch refiners compete on equal terms with scipy (single-threaded)."""
    yield from one_intra_op_thread()


@pytest.mark.parametrize("name", ["none", "gaussian", "guided"])
def test_refine_256px(benchmark, name):
    images, coarse = images_and_coarse(BATCH, (SIZE, SIZE), (GRID, GRID))
    refiner = REFINERS.create(name, channels={}, image_size=SIZE)
    benchmark.group = "refine 256px"
    benchmark.extra_info["images"] = BATCH
    out = benchmark(lambda: refiner.refine(images, None, coarse))
    assert out.shape == (BATCH, SIZE, SIZE)
