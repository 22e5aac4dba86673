"""AnomalyCLIP against the official code (zqhang/AnomalyCLIP, fixture by ``make_anomalyclip.py``)."""
from __future__ import annotations

import numpy as np
import torch

from bench.registry import METHODS
from parity import recipe
from parity.helpers import fixture, minmax, official_backbone, score_and_evaluate, upsampled_grid

TOL = 1e-4
# The official build is its own CLIP with QuickGELU: bench's default for the 'openai' tag on
# ViT-L-14-336; the recipe's architecture has no tag, so the activation is named here.
TAG_ACTIVATION = {"quick_gelu": True}


def run_bench(weights, tmp_path):
    checkpoint = tmp_path / "prompts.pth"  # the official checkpoint format (its learnable tensors)
    torch.save({"prompt_learner": recipe.anomalyclip_prompts()}, checkpoint)
    method = METHODS.create("anomalyclip", checkpoint=str(checkpoint))  # the defaults
    return method, *score_and_evaluate(method, official_backbone(method, weights, TAG_ACTIVATION))


def test_none_is_scored_on_the_official_map(parity_weights, tmp_path):
    official = fixture("anomalyclip")
    _, out, maps = run_bench(parity_weights, tmp_path)
    assert np.abs(out.evaluated.numpy() - official["maps"]).max() < TOL  # upsampled and smoothed (sigma 4)
    assert np.abs(maps.numpy() - minmax(official["maps"])).max() < TOL  # `none`, after the protocol's rescale
    assert np.abs(out.image_scores.numpy() - official["image_scores"]).max() < TOL


def test_the_grid_map_is_not_the_official_one(parity_weights, tmp_path):
    official = fixture("anomalyclip")
    method, out, _ = run_bench(parity_weights, tmp_path)
    assert np.abs(upsampled_grid(method, out) - official["maps"]).max() > 0.01  # what refiners consume: unsmoothed
