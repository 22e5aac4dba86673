"""`bench run --methods all --refiner ard --weights random` end to end on a tiny synthetic set (CPU):
every registered method of 'all' scores, ARD trains and refines, and every unit is logged.

The small form of the issue's command: ViT-B-32 (the methods' default backbones, ViT-L-14-336 at
518 px, take seconds per image on a CPU), two PGT groups, a few ARD steps, one prompt template for
the methods whose ensembles take ~40 s to encode on one thread.
"""
from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.datasets.synthetic import generate
from bench.methods import winclip
from bench.methods.adaclip import model as adaclip_prompts
from bench.methods.aprilgan import model as aprilgan_prompts
from bench.registry import METHODS
from bench.tracking import open_store
from clip_helpers import few_templates_fixture

# the prompt ensembles of APRIL-GAN, AdaCLIP and WinCLIP take 10-40 s to encode on one thread: one template each
few_templates = few_templates_fixture(aprilgan_prompts, adaclip_prompts, winclip)
pytestmark = pytest.mark.usefixtures("one_thread", "few_templates")


def test_all_methods_with_ard_on_random_weights(tmp_path):
    root = generate(tmp_path / "syn", seed=0, categories=["tile"], n_test=12, size=64, progress=False)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "run", "--data-root", str(root), "--out", str(out), "--methods", "all", "--refiners", "ard",
        "--weights", "random", "--backbone", "ViT-B-32", "--set", "pgt.n_groups=2",
        "--set", "pgt.synth_per_group=8", "--set", "refiner_options.ard.steps=3", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    assert "skipped" not in result.output  # with random weights every method of 'all' can run
    units = open_store(out).units()
    assert sorted(units.method.unique()) == sorted(METHODS.resolve("all"))
    assert len(METHODS.resolve("all")) >= 6  # musc, aprilgan, winclip, anomalyclip, vcpclip, adaclip
    assert sorted(units.refiner.unique()) == ["ard", "none"]
    for column in ("pixel_auroc_g2k", "pixel_ap_g2k", "pixel_aupro_g2k"):
        assert all(math.isfinite(v) for v in units[column]), column
