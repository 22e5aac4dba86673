"""What the CLIP method tests share: `bench run` smoke checks (one method alone, through the CLI, on a
random-weight ViT-B-32 and the synthetic dataset), a fixture with fewer prompt templates, and the
information every learned CLIP method declares."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner, Result

from bench.interfaces import MethodInfo


def few_templates_fixture(*modules: ModuleType) -> Callable[[], Iterator[None]]:
    """A module-scoped fixture that keeps only the first of each module's ``TEMPLATES``: a prompt ensemble
    takes ~40 s to encode on one CPU thread."""

    @pytest.fixture(scope="module")
    def few_templates() -> Iterator[None]:
        with pytest.MonkeyPatch.context() as patch:
            for module in modules:  # a module that only re-exports TEMPLATES: patching it changes nothing
                assert any("TEMPLATES" in f.__code__.co_names for f in vars(module).values()
                           if inspect.isfunction(f) and f.__module__ == module.__name__), \
                    f"no function of {module.__name__} reads TEMPLATES; patch the module that builds the prompts"
                patch.setattr(module, "TEMPLATES", module.TEMPLATES[:1])
            yield

    return few_templates


def assert_learned_clip_info(info: MethodInfo, arxiv: str) -> None:
    """A learned CLIP method: trained on an auxiliary dataset, per image, scores unseen images, official
    backbone ViT-L-14-336; its paper is ``arxiv``."""
    assert info.needs_auxiliary_training and not info.inter_image and info.scores_unseen_images
    assert info.default_backbone == "ViT-L-14-336" and info.arxiv == arxiv


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
