"""The recipe's tiny CLIPs registered with open_clip, and their weights on disk (once per session)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from parity import recipe


def _weights(directory: Path, arch: str, config: dict, fp16: bool = False) -> Path:
    """The recipe's weights for open_clip's build of ``arch`` (registered with ``config``), saved as a
    checkpoint file; ``fp16``: rounded to half precision (the values an fp16 archive holds)."""
    import open_clip

    open_clip.factory._MODEL_CONFIGS[arch] = copy.deepcopy(config)
    state = recipe.random_state_dict(recipe.shapes_of(open_clip.create_model(arch)))
    path = directory / "weights.pt"
    torch.save(recipe.half_rounded(state) if fp16 else state, path)
    return path


@pytest.fixture(scope="session")
def parity_weights(tmp_path_factory) -> Path:
    """The tiny CLIP ``recipe.ARCH`` with the recipe's weights."""
    return _weights(tmp_path_factory.mktemp("parity"), recipe.ARCH, recipe.CONFIG)


@pytest.fixture(scope="session")
def d64_weights(tmp_path_factory) -> Path:
    """``recipe.ARCH_D64`` with the recipe's weights rounded to fp16, as VCP-CLIP and AdaCLIP build their CLIP."""
    return _weights(tmp_path_factory.mktemp("parity-d64"), recipe.ARCH_D64, recipe.CONFIG_D64, fp16=True)
