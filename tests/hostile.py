"""Shared by the bad-input tests (``tests/test_bad_*.py``): a tiny valid tree, a store, perfect
maps, and ``fails``: the command answers with ONE ``Error:`` line holding the given words."""
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bench.cli import main
from bench.datasets.synthetic import generate

FAST = ["--refiner", "none", "--quiet", "--n-groups", "2", "--no-cache"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A valid one-category tree (12 test images, 64 px): copied, then broken, by each case."""
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


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def fails(args, *needles):
    """The command fails with one ``Error:`` line holding every needle; returns that line."""
    result = invoke(args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    print(lines[0])  # shown with -s: the message each bad input gets
    return lines[0]


def succeeds(args):
    """The command exits 0 without a traceback; returns its result."""
    result = invoke(args)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return result


def run_id(result) -> str:
    return result.output.split("MLflow run ", 1)[1].split()[0]


def run_args(root, out, *extra):
    return ["run", "--data-root", root, "--out", out, *FAST, *extra]


def eval_args(maps, base, *extra):
    return ["eval", "--maps", maps, "--data-root", base, "--json", *extra]
