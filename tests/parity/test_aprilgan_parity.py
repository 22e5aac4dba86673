"""APRIL-GAN zero-shot against the official code (ByChelsea/VAND-APRIL-GAN, fixture by ``make_aprilgan.py``)."""
from __future__ import annotations

import numpy as np
import torch

from bench.registry import METHODS
from parity import recipe
from parity.helpers import fixture, minmax, official_backbone, score_and_evaluate, upsampled_grid

TOL = 1e-4


def run_bench(weights, tmp_path, backbone_options=None):
    checkpoint = tmp_path / "adapters.pth"  # the official checkpoint format
    torch.save({"trainable_linearlayer": recipe.linear_adapters(4)}, checkpoint)
    method = METHODS.create("aprilgan", checkpoint=str(checkpoint))  # the defaults
    return method, *score_and_evaluate(method, official_backbone(method, weights, backbone_options))


def test_none_is_scored_on_the_official_map(parity_weights, tmp_path):
    official = fixture("aprilgan")
    _, out, maps = run_bench(parity_weights, tmp_path)
    assert np.abs(out.evaluated.numpy() - official["maps"]).max() < TOL  # logits upsampled, then the softmax
    assert np.abs(maps.numpy() - minmax(official["maps"])).max() < TOL  # `none`, after the protocol's rescale
    assert np.abs(out.image_scores.numpy() - official["image_scores"]).max() < TOL


def test_the_grid_map_and_quickgelu_miss_the_official_maps(parity_weights, tmp_path):
    official = fixture("aprilgan")
    method, out, _ = run_bench(parity_weights, tmp_path)
    assert np.abs(upsampled_grid(method, out) - official["maps"]).max() > 0.1  # what refiners consume, upsampled
    _, out, _ = run_bench(parity_weights, tmp_path, {"quick_gelu": True})  # the tag's activation
    assert np.abs(out.evaluated.numpy() - official["maps"]).max() > 1e-3
    assert np.abs(out.image_scores.numpy() - official["image_scores"]).max() > 1e-3
