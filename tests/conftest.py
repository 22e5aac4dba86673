"""Fixtures shared by the test suite."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


# ----------------------------------------------------------------------------- bad-input tests (tests/test_bad_*.py)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A valid one-category tree (12 test images, 64 px): copied, then broken, by each case."""
    from bench.datasets.synthetic import generate

    return generate(tmp_path_factory.mktemp("data") / "syn", seed=1, categories=["tile"], n_test=12, size=64, progress=False)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """One MLflow store for a whole module (a fresh store costs seconds of schema migration).
    Every case has its own tree, so its config hash differs and no case resumes another's run."""
    return tmp_path_factory.mktemp("out")


@pytest.fixture
def tree(base, tmp_path):
    """A fresh copy of the base tree and its first anomalous image and mask."""
    root = shutil.copytree(base, tmp_path / "tree")
    image = sorted(p for p in (root / "tile" / "test").rglob("*.png") if p.parent.name != "good")[0]
    mask = root / "tile" / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"
    return root, image, mask


@pytest.fixture
def maps(base, tmp_path):
    """Perfect maps for ``bench eval`` (the masks themselves), one .npy per test image."""
    root = tmp_path / "maps"
    for image in (base / "tile" / "test").rglob("*.png"):
        mask = base / "tile" / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"
        values = np.asarray(Image.open(mask)) > 0 if mask.is_file() else np.zeros((64, 64), bool)
        target = root / "tile" / "test" / image.parent.name / f"{image.stem}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, values.astype(np.float32))
    return root
