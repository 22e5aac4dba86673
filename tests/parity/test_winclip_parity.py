"""WinCLIP zero-shot against anomalib's WinClipModel (fixture by ``make_winclip.py``, anomalib 2.7.0 with open_clip 2.24.0)."""
from __future__ import annotations

import numpy as np

from parity import recipe
from parity.helpers import backbone, fixture

from bench.registry import METHODS, REFINERS

TOL = 1e-4


def test_maps_and_image_scores_match_anomalib(parity_weights):
    official = fixture("winclip")
    method = METHODS.create("winclip")
    net = backbone(parity_weights, **method.backbone_options("ViT-B-16"))  # any ViT: the window extra, scales 2, 3
    method.bind(net)
    x = net.preprocess(recipe.images())
    features = net.features(x)
    features.category = "bottle"
    out = method.score(features)
    refiner = REFINERS.create("none")
    refiner.bind(method.info)
    maps = refiner.refine(x, None, out.maps)
    assert np.abs(maps.numpy() - official["maps"]).max() < TOL  # `none` = anomalib's map
    assert np.abs(out.image_scores.numpy() - official["image_scores"]).max() < TOL
