"""Bench's side of the parity recipe: the stored official outputs and the backbone on the recipe's weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from parity import recipe

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture(name: str) -> dict[str, np.ndarray]:
    """The official outputs stored in ``fixtures/<name>.npz``."""
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


def backbone(weights: Path, **options: object):
    """Bench's open_clip backbone on the tiny CLIP with the recipe's weights (CPU, fp32)."""
    from bench.backbones.openclip import OpenClipBackbone

    return OpenClipBackbone(recipe.ARCH, weights=str(weights), **{"input_size": recipe.IMAGE_SIZE, "precision": "fp32", **options})


def score_and_upsample(method, net, category: str | None = "bottle"):
    """Bind ``method`` to ``net`` and score the recipe's images: its output and the maps `none` evaluates."""
    from bench.registry import REFINERS

    method.bind(net)
    x = net.preprocess(recipe.images())
    features = net.features(x)
    features.category = category
    out = method.score(features)
    refiner = REFINERS.create("none")
    refiner.bind(method.info)
    return out, refiner.refine(x, features, out.maps)


def official_backbone(method, weights: Path, overrides: dict | None = None):
    """The backbone ``method`` asks for at its published setting (ViT-L-14-336: layers, activation), on the
    recipe's tiny CLIP at the recipe's size, with ``overrides`` on top."""
    options = method.backbone_options("ViT-L-14-336")
    options.pop("input_size")
    return backbone(weights, **{**options, **(overrides or {})})
