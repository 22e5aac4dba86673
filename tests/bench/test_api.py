"""bench/api.py: which methods a run sets up (``--methods all`` skips the unusable ones, saying why)
and the method catalog behind `bench list methods`."""
from __future__ import annotations

import warnings

import pytest
from click.testing import CliRunner

from bench.api import Runner, SkippedMethodWarning, method_catalog
from bench.backbones import openclip
from bench.cli import main
from bench.config import RunConfig
from bench.errors import ConfigError, WeightsError


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(openclip, "network_reachable", lambda *a, **k: False)


def test_all_skips_methods_that_cannot_run_and_says_why(offline, tmp_path):
    runner = Runner(RunConfig(out=str(tmp_path)), progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        usable = runner.usable_methods(["musc", "aprilgan"], skip_unusable=True)
    assert usable == ["musc"]
    assert list(runner.skipped) == ["aprilgan"] and "openai" in runner.skipped["aprilgan"]
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedMethodWarning)]
    assert len(messages) == 1 and messages[0].startswith("--methods all: skipping aprilgan: ")


def test_named_methods_are_never_skipped(offline, tmp_path):
    runner = Runner(RunConfig(out=str(tmp_path)), progress=False)
    with pytest.raises(WeightsError, match="openai"):
        runner.usable_methods(["musc", "aprilgan"], skip_unusable=False)


def test_all_with_nothing_usable_is_one_error_listing_each_reason(offline, tmp_path):
    runner = Runner(RunConfig(out=str(tmp_path)), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match="no method can run.*aprilgan: "):
            runner.usable_methods(["aprilgan"], skip_unusable=True)


def test_catalog_describes_every_method():
    cards = {card.name: card for card in method_catalog()}
    assert cards["musc"].training == "none" and "2401.16753" in cards["musc"].paper
    assert cards["musc"].settings["r_list"] == [1, 3, 5] and cards["musc"].in_all
    assert cards["aprilgan"].training == "auxiliary dataset" and cards["aprilgan"].default_backbone == "ViT-L-14-336"
    assert "maps_dir" in cards["external"].settings["needs"] and not cards["external"].in_all


def test_list_methods_shows_paper_training_and_details():
    result = CliRunner().invoke(main, ["list", "methods", "--details"])
    assert result.exit_code == 0, result.output
    for needle in ("2401.16753", "2305.17382", "auxiliary", "r_list: [1, 3, 5]", "deviations from the official code"):
        assert needle in result.output, needle


def test_all_never_skips_a_method_with_bad_options(tmp_path):
    runner = Runner(RunConfig(out=str(tmp_path), method_options={"musc": {"r_list": [2]}}), progress=False)
    with pytest.raises(ConfigError, match="odd"):
        runner.usable_methods(["musc"], skip_unusable=True)
    assert runner.skipped == {}


def test_all_never_skips_weights_the_user_named(tmp_path):
    missing = tmp_path / "missing.pth"
    runner = Runner(RunConfig(out=str(tmp_path), weights=str(missing)), progress=False)
    with pytest.raises(WeightsError, match="missing.pth"):
        runner.usable_methods(["musc", "aprilgan"], skip_unusable=True)
    assert runner.skipped == {}
