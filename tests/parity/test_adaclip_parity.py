"""AdaCLIP against the official code (caoyunkang/AdaCLIP, fixture by ``make_adaclip.py``)."""
from __future__ import annotations

import numpy as np

from bench.methods.adaclip.model import HybridPrompts
from parity import recipe
from parity.helpers import assert_official_maps, fixture, run_official_checkpoint, upsampled_grid

TOL = 1e-4
KMEANS_BOUND = 0.025  # measured 2.1e-2 (caoyunkang/AdaCLIP@e27ee32b on the recipe)


def run_bench(weights, tmp_path, backbone_options=None):
    return run_official_checkpoint("adaclip", recipe.adaclip_checkpoint(), weights, tmp_path, backbone_options, recipe.ARCH_D64)


def test_none_is_scored_on_the_official_map(d64_weights, tmp_path):
    official = fixture("adaclip")
    _, out, maps = run_bench(d64_weights, tmp_path)
    assert_official_maps(out, maps, official["maps"], TOL)  # logits upsampled, softmax, sigma 4
    # HSF's k-means: bench seeds it per image (0); the official run draws on numpy's global state.
    # With the same seed the scores agree, except that k-means++ is a discrete draw whose path can
    # differ between machines: on an AVX-512 machine (sklearn 1.7.2 to 1.9.1 alike, maps still at
    # 1.3e-6) one of the six images lands in another partition (3.3e-3), so one may differ, within
    # the bound below; the fixture's machine had all six at 1.1e-5.
    seeded = np.abs(out.image_scores.numpy() - official["image_scores_kmeans_seed0"])
    assert (seeded < TOL).sum() >= len(seeded) - 1, seeded
    assert seeded.max() < KMEANS_BOUND
    assert np.abs(out.image_scores.numpy() - official["image_scores"]).max() < KMEANS_BOUND


def test_the_grid_map_unrounded_prompts_and_quickgelu_miss_the_official_maps(d64_weights, tmp_path, monkeypatch):
    official = fixture("adaclip")
    method, out, _ = run_bench(d64_weights, tmp_path)
    assert np.abs(upsampled_grid(method, out) - official["maps"]).max() > 0.01  # what refiners consume, upsampled
    _, out, _ = run_bench(d64_weights, tmp_path, {"quick_gelu": True})  # the tag's activation
    assert np.abs(out.evaluated.numpy() - official["maps"]).max() > 1e-3
    monkeypatch.setattr(HybridPrompts, "context", lambda self, block, dynamic: self.static[block] + dynamic)
    _, out, _ = run_bench(d64_weights, tmp_path)  # the hybrid prompts without the official fp16 rounding
    assert np.abs(out.evaluated.numpy() - official["maps"]).max() > 1e-5
