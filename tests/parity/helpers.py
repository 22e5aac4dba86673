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

    return OpenClipBackbone(recipe.ARCH, weights=str(weights), input_size=recipe.IMAGE_SIZE, precision="fp32", **options)
