"""The README's examples run: the Python API script, and the plugin distribution installed from
outside the repository (entry points ``bench.methods`` / ``bench.refiners``) and used by the CLI."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.datasets.synthetic import generate
from bench.tracking import open_store

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SRC = Path(__import__("bench").__file__).resolve().parents[1]  # the bench under test
TINY = ["pgt.n_groups=2", "pgt.synth_per_group=4", "refiner_options.ard.steps=2", "figures=0"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "syn", seed=0, categories=["tile"], n_test=12, size=64,
                    progress=False)


def python(*args: str, path: list[Path] = (), cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(map(str, [*path, SRC]))}
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["python_api.py", "plugin/bench_example_plugin.py", "plugin/pyproject.toml"])
def test_the_readme_shows_each_example_file_as_it_is(name):
    assert (EXAMPLES / name).read_text().strip() in (REPO / "README.md").read_text(), name


def test_the_python_api_example_runs_a_config_and_prints_its_table(tiny_root, tmp_path):
    done = python(str(EXAMPLES / "python_api.py"), f"data_root={tiny_root}", f"out={tmp_path}", *TINY)
    assert done.returncode == 0, done.stderr
    assert "pixel AP (groups 2..k) (%)" in done.stdout and "musc Δard" in done.stdout
    assert set(open_store(tmp_path).units().refiner) == {"none", "ard"}


def test_a_plugin_installed_elsewhere_registers_a_method_and_a_refiner(tiny_root, tmp_path):
    source, site = tmp_path / "plugin", tmp_path / "site"
    shutil.copytree(EXAMPLES / "plugin", source)
    pip = python("-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                 "--target", str(site), str(source))
    assert pip.returncode == 0, pip.stderr
    listed = python("-m", "bench", "list", path=[site])
    assert listed.returncode == 0, listed.stderr
    assert "median_distance" in listed.stdout and "power" in listed.stdout
    out = tmp_path / "out"
    ran = python("-m", "bench", "run", "--data-root", str(tiny_root), "--out", str(out), "--quiet",
                 "--methods", "median_distance", "--refiners", "power", "--set", "pgt.n_groups=2",
                 "--set", "refiner_options.power.power=3", path=[site], cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    units = open_store(out).units()
    assert set(units.method) == {"median_distance"} and set(units.refiner) == {"none", "power"}
