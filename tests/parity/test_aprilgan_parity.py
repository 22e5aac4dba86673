"""APRIL-GAN zero-shot against the official code (ByChelsea/VAND-APRIL-GAN, fixture by ``make_aprilgan.py``)."""
from __future__ import annotations

import numpy as np
import torch

from bench.registry import METHODS
from parity import recipe
from parity.helpers import fixture, official_backbone, score_and_upsample

TOL = 1e-4


def run_bench(weights, tmp_path, backbone_options=None, **method_options):
    checkpoint = tmp_path / "adapters.pth"  # the official checkpoint format
    torch.save({"trainable_linearlayer": recipe.linear_adapters(4)}, checkpoint)
    method = METHODS.create("aprilgan", checkpoint=str(checkpoint), **method_options)
    return score_and_upsample(method, official_backbone(method, weights, backbone_options))


def test_maps_and_image_scores_match_the_official_code(parity_weights, tmp_path):
    official = fixture("aprilgan")
    out, maps = run_bench(parity_weights, tmp_path, resolution="input")  # the official order
    assert np.abs(maps.numpy() - official["maps"]).max() < TOL  # `none` = the official map
    assert np.abs(out.image_scores.numpy() - official["image_scores"]).max() < TOL


def test_the_grid_map_and_quickgelu_miss_the_official_maps(parity_weights, tmp_path):
    official = fixture("aprilgan")
    _, maps = run_bench(parity_weights, tmp_path, resolution="grid")  # softmax on the grid, then upsampled
    assert np.abs(maps.numpy() - official["maps"]).max() > 0.1
    out, maps = run_bench(parity_weights, tmp_path, {"quick_gelu": True}, resolution="input")  # the tag's activation
    assert np.abs(maps.numpy() - official["maps"]).max() > 1e-3
    assert np.abs(out.image_scores.numpy() - official["image_scores"]).max() > 1e-3
