"""Fixtures shared by the test suite."""
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
