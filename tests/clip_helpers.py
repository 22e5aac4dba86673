"""`bench run` smoke checks shared by the CLIP method tests: one method alone, through the CLI, on a
random-weight ViT-B-32 and the synthetic dataset."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result


def bench_run(method: str, root: Path, out: Path, *options: str) -> Result:
    """`bench run` of ``method`` on ViT-B-32 with random weights, no refiner, 2 PGT groups, plus ``options``."""
    from bench.cli import main

    return CliRunner().invoke(main, [
        "run", "--data-root", str(root), "--out", str(out), "--methods", method, "--backbone", "ViT-B-32",
        "--weights", "random", "--refiners", "none", "--set", "pgt.n_groups=2", "--quiet", *options])


def assert_runs(method: str, root: Path, out: Path, *options: str) -> None:
    """The run succeeds and records one results unit, of ``method``."""
    from bench.tracking import open_store

    result = bench_run(method, root, out, *options)
    assert result.exit_code == 0, result.output
    units = open_store(out).units()
    assert list(units.method.unique()) == [method] and len(units) == 1


def assert_missing_weights_named(method: str, root: Path, out: Path, missing: Path, trainer: str) -> None:
    """With the method's ``checkpoint`` naming a ``missing`` file the run fails with a clear message (no
    traceback) that names the file and ``trainer``, the function that makes the weights."""
    result = bench_run(method, root, out, "--set", f"method_options.{method}.checkpoint={missing}")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert str(missing) in result.output and trainer in result.output
