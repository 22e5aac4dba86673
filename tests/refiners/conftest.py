"""Fixtures of the refiner tests; their inputs and small widths live in tests/refiner_inputs.py
(shared with the refiner speed benchmark, which cannot import this conftest)."""
import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every refiner test module runs on one intra-op thread (see ``refiner_inputs.one_intra_op_thread``)."""
