"""Fixtures shared by the test suite."""
import pytest

from fakes import BrightnessMethod, TinyBackbone


@pytest.fixture
def tiny_backbone() -> TinyBackbone:
    return TinyBackbone()


@pytest.fixture
def brightness_method() -> BrightnessMethod:
    return BrightnessMethod()
