"""The ``vcp_embedding`` CLIP extra: the image embedding before L2 normalisation, pinned against a
hand-written forward of the image tower (patch embedding, class token, position embedding,
``ln_pre``, the blocks, ``ln_post`` of the class token, ``@ proj``) on a tiny random ViT."""
from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from bench.backbones.openclip import OpenClipBackbone

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = "vcp-embedding-test-tiny"
TINY_CFG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    from open_clip import factory

    path = tmp_path_factory.mktemp("arch") / f"{TINY}.json"
    path.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(path)
    yield OpenClipBackbone(TINY, weights="random", extras={"vcp_embedding": {}})
    factory._MODEL_CONFIG_PATHS.remove(path)
    factory._MODEL_CONFIGS.pop(TINY, None)


def hand_embedding(visual, x: torch.Tensor) -> torch.Tensor:
    """``ln_post`` of the class token after the blocks, ``@ proj``: the official image embedding."""
    tokens = visual.conv1(x).flatten(2).transpose(1, 2)  # (B, h·w, C), row-major patches
    cls = visual.class_embedding.expand(len(x), 1, -1)
    tokens = visual.ln_pre(torch.cat([cls, tokens], dim=1) + visual.positional_embedding)
    for block in visual.transformer.resblocks:
        tokens = block(tokens)
    return visual.ln_post(tokens[:, 0]) @ visual.proj


def test_the_extra_is_the_unnormalised_class_token_embedding(backbone):
    rng = np.random.default_rng(0)
    x = backbone.preprocess([rng.integers(0, 256, (30, 36, 3), dtype=np.uint8) for _ in range(3)])
    features = backbone.features(x)
    assert backbone.extra_channels == {"vcp_embedding": 24}
    assert backbone.identity()["extras"] == {"vcp_embedding": {}}
    value = features.layers["vcp_embedding"]
    assert value.shape == (3, 24, 1, 1)
    with torch.no_grad():
        expected = hand_embedding(backbone.model.visual, x)
    assert torch.allclose(value.flatten(1), expected, atol=1e-5)
    assert not torch.allclose(value.flatten(1).norm(dim=1), torch.ones(3), atol=1e-2)  # not normalised
    assert torch.allclose(F.normalize(value.flatten(1), dim=-1), features.embedding, atol=1e-6)
