"""The recipe's tiny CLIP registered with open_clip, and its weights on disk (once per session)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from parity import recipe


@pytest.fixture(scope="session")
def parity_weights(tmp_path_factory) -> Path:
    """The recipe's weights for open_clip's build of the tiny CLIP, saved as a checkpoint file."""
    import open_clip

    open_clip.factory._MODEL_CONFIGS[recipe.ARCH] = copy.deepcopy(recipe.CONFIG)
    model = open_clip.create_model(recipe.ARCH)
    path = tmp_path_factory.mktemp("parity") / "weights.pt"
    torch.save(recipe.random_state_dict(recipe.shapes_of(model)), path)
    return path

