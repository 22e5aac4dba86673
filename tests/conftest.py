"""Fixtures shared by the test suite."""
from pathlib import Path

import pytest

from fakes import BrightnessMethod, TinyBackbone
from refiner_inputs import one_intra_op_thread


@pytest.fixture
def tiny_backbone() -> TinyBackbone:
    return TinyBackbone()


@pytest.fixture
def brightness_method() -> BrightnessMethod:
    return BrightnessMethod()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    yield from one_intra_op_thread()


@pytest.fixture(scope="session")
def synthetic_tiles(tmp_path_factory) -> Path:
    """The synthetic dataset's 'tile' category, 8 test images of 64 px (read only: shared by the session)."""
    from bench.datasets.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic") / "syn", seed=0, categories=["tile"], n_test=8, size=64,
                    progress=False)
