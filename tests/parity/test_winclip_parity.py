"""WinCLIP zero-shot against anomalib's WinClipModel (fixture by ``make_winclip.py``, anomalib 2.7.0 with open_clip 2.24.0)."""
from __future__ import annotations

import numpy as np

from bench.registry import METHODS
from parity.helpers import backbone, fixture, minmax, score_and_evaluate

TOL = 1e-4


def test_maps_and_image_scores_match_anomalib(parity_weights):
    official = fixture("winclip")
    method = METHODS.create("winclip")
    net = backbone(parity_weights, **method.backbone_options("ViT-B-16"))  # any ViT: the window extra, scales 2, 3
    out, maps = score_and_evaluate(method, net)
    assert out.evaluated is None  # anomalib evaluates the grid map upsampled (bilinear), as the protocol does
    assert np.abs(maps.numpy() - minmax(official["maps"])).max() < TOL  # `none`, after the protocol's rescale
    assert np.abs(out.image_scores.numpy() - official["image_scores"]).max() < TOL
