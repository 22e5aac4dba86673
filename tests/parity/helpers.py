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


def backbone(weights: Path, arch: str = recipe.ARCH, **options: object):
    """Bench's open_clip backbone on a tiny CLIP of the recipe (``arch``) with the recipe's weights (CPU, fp32)."""
    from bench.backbones.openclip import OpenClipBackbone

    return OpenClipBackbone(arch, weights=str(weights), **{"input_size": recipe.IMAGE_SIZE, "precision": "fp32", **options})


def score_and_evaluate(method, net, category: str | None = "bottle"):
    """Bind ``method`` to ``net``, score the recipe's images and run the protocol with ``none`` alone on them:
    the method's output and the maps ``none`` is scored on (at the method's defaults)."""
    from bench.config import PGTConfig
    from bench.protocol import Stream, make_groups, run_pgt
    from bench.registry import REFINERS

    method.bind(net)
    pixels = recipe.images()
    x = net.preprocess(pixels)
    features = net.features(x)
    features.category = category
    out = method.score(features)
    stream = Stream(np.stack(pixels), x, features, labels=np.zeros(len(pixels), dtype=int))
    config = PGTConfig(n_groups=2)
    groups = make_groups(len(pixels), config, seed=0)
    pgt = run_pgt(stream, out, groups, method, net, {"none": REFINERS.create("none")}, config, 0.0, seed=0)
    return out, pgt.maps["none"]


def minmax(maps: np.ndarray) -> np.ndarray:
    """The protocol's per-category min-max rescale (monotone: no metric sees it), applied to official maps."""
    return (maps - maps.min()) / (maps.max() - maps.min())


def assert_official_maps(out, none_maps, official: np.ndarray, tol: float = 1e-4) -> None:
    """The method's evaluation map is the official map; ``none`` is scored on it after the protocol's rescale."""
    assert np.abs(out.evaluated.numpy() - official).max() < tol
    assert np.abs(none_maps.numpy() - minmax(official)).max() < tol


def upsampled_grid(method, out) -> np.ndarray:
    """The method's grid maps upsampled to the recipe's size as the protocol upsamples them (bilinear,
    the method's ``align_corners``): what ``none`` would be scored on without ``evaluated``."""
    from bench.ops import upsample

    size = (recipe.IMAGE_SIZE, recipe.IMAGE_SIZE)
    return upsample(out.maps, size, align_corners=method.info.align_corners).numpy()


def official_backbone(method, weights: Path, overrides: dict | None = None, arch: str = recipe.ARCH):
    """The backbone ``method`` asks for at its published setting (ViT-L-14-336: layers, activation), on the
    recipe's tiny CLIP at the recipe's size, with ``overrides`` on top."""
    options = method.backbone_options("ViT-L-14-336")
    options.pop("input_size")
    return backbone(weights, arch, **{**options, **(overrides or {})})


def run_official_checkpoint(name: str, checkpoint: dict, weights: Path, tmp_path: Path,
                            backbone_options: dict | None = None, arch: str = recipe.ARCH):
    """Method ``name`` at its defaults on ``checkpoint`` (saved in the official format) and the backbone it asks
    for: the method, its output and the maps ``none`` is scored on."""
    import torch

    from bench.registry import METHODS

    path = tmp_path / f"{name}.pth"
    torch.save(checkpoint, path)
    method = METHODS.create(name, checkpoint=str(path))
    return method, *score_and_evaluate(method, official_backbone(method, weights, backbone_options, arch))
