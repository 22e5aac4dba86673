"""bench/plan.py and bench/catalog.py: which methods a run sets up (``--methods all`` skips the
unusable ones, saying why) and the method catalog behind `bench list methods`."""
from __future__ import annotations

import warnings

import pytest
from click.testing import CliRunner

from bench.backbones import _clip_weights
from bench.catalog import method_catalog
from bench.cli import main
from bench.config import RunConfig
from bench.errors import ConfigError, WeightsError
from bench.plan import Backbones, SkippedMethodWarning, bind_methods


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(_clip_weights, "network_reachable", lambda *a, **k: False)


def usable_methods(config: RunConfig, names: list[str], skip_unusable: bool):
    bound, skipped = bind_methods(names, config, Backbones(config), skip_unusable)
    return list(bound), skipped


def test_all_skips_methods_that_cannot_run_and_says_why_in_one_line_and_a_hint(offline, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        usable, skipped = usable_methods(RunConfig(out=str(tmp_path)), ["musc", "aprilgan", "winclip", "adaclip"], True)
    assert usable == ["musc"]
    assert list(skipped) == ["aprilgan", "winclip", "adaclip"] and "openai" in skipped["aprilgan"]
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedMethodWarning)]
    assert len(messages) == 1
    line, hint = messages[0].splitlines()
    assert line.startswith("--methods all: skipped aprilgan, adaclip (ViT-L-14-336 weights 'openai': no cached file found)")
    assert "winclip (ViT-B-16-plus-240 weights 'laion400m_e31'" in line and len(line) < 250
    assert hint.startswith("Hint: name a skipped method (--methods aprilgan)")


def test_named_methods_are_never_skipped(offline, tmp_path):
    with pytest.raises(WeightsError, match="openai"):
        usable_methods(RunConfig(out=str(tmp_path)), ["musc", "aprilgan"], skip_unusable=False)


def test_all_with_nothing_usable_is_one_error_listing_each_reason(offline, tmp_path):
    with pytest.raises(ConfigError, match="no method can run.*aprilgan: "):
        usable_methods(RunConfig(out=str(tmp_path)), ["aprilgan"], skip_unusable=True)


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
    config = RunConfig(out=str(tmp_path), method_options={"musc": {"r_list": [2]}})
    with pytest.raises(ConfigError, match="odd"):
        usable_methods(config, ["musc"], skip_unusable=True)


def test_all_never_skips_weights_the_user_named(tmp_path):
    missing = tmp_path / "missing.pth"
    with pytest.raises(WeightsError, match="missing.pth"):
        usable_methods(RunConfig(out=str(tmp_path), weights=str(missing)), ["musc", "aprilgan"], skip_unusable=True)
