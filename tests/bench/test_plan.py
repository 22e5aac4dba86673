"""bench/plan.py: every configuration error stops `bench run` with one `Error:` line before any work
(no embedded dataset written, no MLflow store created); the plan binds each method once."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.config import RunConfig
from bench.errors import ConfigError
from bench.plan import build_plan, refiner_class
from bench.refiners.gaussian import GaussianRefiner
from bench.registry import REFINERS


@pytest.fixture
def maps_dir(tmp_path):
    folder = tmp_path / "maps"
    folder.mkdir()
    return str(folder)


BAD = [
    (["--refiners", "ardd"], "Did you mean 'ard'"),
    (["--refiner", "ardd"], "Did you mean 'ard'"),  # the old spelling, deprecated
    (["--methods", "muscc"], "Did you mean 'musc'"),
    (["--methods", "musc", "--set", "refiner_options.ard.stepz=40"], "stepz"),
    (["--methods", "musc", "--set", "refiner_options.ard.steps=abc"], "refiner 'ard'"),
    (["--methods", "musc", "--refiners", "gaussian", "--set", "refiner_options.gaussian.sigmaa=2"], "gaussian"),
    (["--methods", "musc", "--set", "method_options.musc.r_lis=3"], "r_lis"),
    (["--methods", "external", "--set", "method_options.external.maps_dir=MAPS", "--refiners", "ard"],
     "trainable refiner(s) ard"),
    (["--methods", "musc", "--set", "pgt.n_groups=120"], "needs at least"),
    (["--methods", "musc", "--categories", "woood"], "Did you mean 'wood'"),
    (["--methods", "musc", "--set", "pgt.synth.recipes=[texture,sparkles]"], "pgt.synth.recipes"),
    (["--methods", "musc", "--set", "pgt.synth.threshold=abc"], "pgt.synth.threshold"),
    (["--methods", "musc", "--set", "pgt.synth.perlin_scale_range=[4,2]"], "pgt.synth.perlin_scale_range"),
    (["--methods", "musc", "--set", "pgt.synth.texture_dir=/no/such/dtd"], "/no/such/dtd"),
    (["--methods", "musc", "--device", "cuda:x"], "device"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_configuration_is_one_error_line_before_any_work(args, needle, tmp_path, maps_dir):
    out = tmp_path / "out"
    args = [maps_dir.join(a.split("MAPS")) if "MAPS" in a else a for a in args]
    result = CliRunner().invoke(main, ["run", "--out", str(out), "--quiet", *args])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and needle in errors[0], result.output
    assert "Traceback" not in result.output
    assert not (out / "data").exists() and not (out / "mlflow.db").exists()  # nothing written, no run created


def test_the_plan_creates_and_binds_each_method_once_and_reads_refiner_classes(tmp_path):
    plan = build_plan(RunConfig(out=tmp_path, methods="musc", refiners="ard,gaussian"))
    assert list(plan.methods) == ["musc"] and plan.refiners == ("none", "ard", "gaussian")
    assert plan.trainable == ["ard"] and plan.dataset is None  # the embedded default: planned, not written
    assert plan.categories == ["fabric", "nut", "pcb", "pill", "tile", "wood"]
    assert [(t.category, t.method) for t in plan.tasks()][:2] == [("fabric", "musc"), ("nut", "musc")]
    assert not (tmp_path / "data").exists()


def test_old_spellings_work_with_one_deprecation_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--out", str(tmp_path / "out"), "--refiner", "ardd"])
    assert "Warning: --refiner is deprecated; use --refiners" in result.output  # then the name is checked
    assert "Did you mean 'ard'" in result.output
    result = runner.invoke(main, ["data", "synth", "--out", str(tmp_path / "syn"), "--categories", "tile",
                                  "--n-test", "3", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert "Warning: --out is deprecated; use --data-root" in result.output and (tmp_path / "syn" / "tile").is_dir()
    result = runner.invoke(main, ["data", "synth", "--data-root", str(tmp_path / "new"), "--categories", "tile",
                                  "--n-test", "3", "--size", "32"])
    assert result.exit_code == 0 and "deprecated" not in result.output and (tmp_path / "new" / "tile").is_dir()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_device_takes_cuda_n_as_the_config_does(tmp_path):
    result = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "out"), "--device", "cuda:1"])
    assert result.exit_code == 1 and "invalid choice" not in result.output
    assert "Error: invalid device='cuda:1': CUDA is not available" in result.output


def test_whether_a_refiner_trains_is_read_off_the_class_its_factory_declares(monkeypatch):
    monkeypatch.setattr(REFINERS, "_entries", dict(REFINERS._entries))  # restored after the test
    assert refiner_class("ard").trainable and not refiner_class("gaussian").trainable

    @REFINERS.register("annotated_gaussian")
    def annotated(**options) -> GaussianRefiner:
        return GaussianRefiner(**options)

    @REFINERS.register("bare_gaussian")
    def bare(**options):
        return GaussianRefiner(**options)

    assert refiner_class("annotated_gaussian") is GaussianRefiner
    with pytest.raises(ConfigError, match="bare_gaussian.*annotated with the Refiner class"):
        refiner_class("bare_gaussian")  # neither taken to train nor not to: refused
