"""The ``vcp_embedding`` CLIP extra: the image embedding before L2 normalisation, pinned against a
hand-written forward of the image tower (patch embedding, class token, position embedding,
``ln_pre``, the blocks, ``ln_post`` of the class token, ``@ proj``) on a tiny random ViT."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.backbones.openclip import OpenClipBackbone
from bench.methods.vcpclip.embedding import VcpEmbedding
from fakes import registered_tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def backbone():
    with registered_tiny_vit("vcp-embedding-test-tiny", embed_dim=24, width=32, layers=2, text_width=16) as name:
        yield OpenClipBackbone(name, weights="random", extras={VcpEmbedding: {}})


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
