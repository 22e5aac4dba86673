"""The ``dpam`` CLIP extra (bench/methods/anomalyclip/dpam.py): AnomalyCLIP's V-V attention path
pinned against a direct computation (per-head loops over the official formulas, the ordinary
token stream taken from open_clip's own forward) on a tiny random ViT, then through the backbone."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from open_clip.transformer import VisionTransformer

from bench.errors import ConfigError
from bench.methods.anomalyclip.dpam import DPAM
from bench.registry import BACKBONES

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, width=16, layers=4, heads=2, mlp_ratio=2.0,
                             output_dim=6).eval()


def _backbone(vit, layers=("block2", "block4")):
    return SimpleNamespace(model=SimpleNamespace(visual=vit), layers=layers)


def ordinary_stream(vit, x):
    """x_0 (embeddings, built by hand) and x_1..x_depth (open_clip's own forward), class token first."""
    patches = vit.conv1(x).flatten(2).transpose(1, 2)
    cls = vit.class_embedding.expand(len(x), 1, -1)
    x0 = vit.ln_pre(torch.cat([cls, patches], dim=1) + vit.positional_embedding)
    out = vit.forward_intermediates(x, indices=list(range(len(vit.transformer.resblocks))), output_fmt="NLC",
                                    output_extra_tokens=True, intermediates_only=True)
    blocks = [torch.cat([c, p], dim=1) for c, p in zip(out["image_intermediates_prefix"], out["image_intermediates"])]
    return [x0, *blocks]


def vv_by_hand(block, y):
    """Official ``Attention`` with q = k = v, head by head: out_proj(concat_h softmax(v_h v_hᵀ/√d) v_h)."""
    attn = block.attn
    width = y.shape[-1]
    heads = attn.num_heads
    d = width // heads
    v = y @ attn.in_proj_weight[2 * width :].T + attn.in_proj_bias[2 * width :]
    parts = []
    for h in range(heads):
        vh = v[..., h * d : (h + 1) * d]
        weights = torch.softmax(vh @ vh.transpose(-1, -2) / math.sqrt(d), dim=-1)
        parts.append(weights @ vh)
    return torch.cat(parts, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias


def vv_path_by_hand(vit, x, start):
    """z_j for blocks j >= start (1-based): z_s = x_{s-1} + VV_s(ln_1 x_{s-1}), z_j = z_{j-1} + VV_j(ln_1 x_{j-1})."""
    stream = ordinary_stream(vit, x)
    z, out = None, {}
    for j, block in enumerate(vit.transformer.resblocks, start=1):
        if j >= start:
            x_in = stream[j - 1]
            z = (x_in if z is None else z) + vv_by_hand(block, block.ln_1(x_in))
            out[j] = z
    return out, stream[-1]


def _as_map(tokens, side):
    return tokens[:, 1:].reshape(len(tokens), side, side, -1).permute(0, 3, 1, 2)


def test_vv_path_matches_the_direct_computation(vit):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    extra = DPAM(_backbone(vit), start="block2")
    with torch.no_grad():
        got = extra.compute(x, embedding=None)  # DPAM runs its own pass; it reads no embedding
        want, last = vv_path_by_hand(vit, x, start=2)
    assert list(got) == ["dpam.block2", "dpam.block4", "dpam.embedding"] == list(extra.channels)
    assert extra.channels == {"dpam.block2": 16, "dpam.block4": 16, "dpam.embedding": 6}
    for j in (2, 4):
        assert got[f"dpam.block{j}"].shape == (2, 16, 4, 4)
        torch.testing.assert_close(got[f"dpam.block{j}"], _as_map(want[j], 4), rtol=1e-5, atol=1e-5)
    # the image feature: the last class token @ proj, without ln_post
    torch.testing.assert_close(got["dpam.embedding"][:, :, 0, 0], last[:, 0] @ vit.proj, rtol=1e-5, atol=1e-6)
    # not the ordinary stream, and the start matters (block2 vs block1)
    stream = ordinary_stream(vit, x)
    assert not torch.allclose(got["dpam.block4"], _as_map(stream[4], 4), atol=1e-3)
    with torch.no_grad():
        from_one = DPAM(_backbone(vit, ("block4",)), start="block1").compute(x, embedding=None)["dpam.block4"]
        want_one, _ = vv_path_by_hand(vit, x, start=1)
    torch.testing.assert_close(from_one, _as_map(want_one[4], 4), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(from_one, got["dpam.block4"], atol=1e-3)


def test_defaults_options_and_errors(vit):
    extra = DPAM(_backbone(vit, ("block4", "block3")))  # start: the shallowest layer
    assert extra.identity() == {"layers": ["block3", "block4"], "start": "block3"}
    assert DPAM(_backbone(vit), layers="block4, block2", start="block1").identity() == {
        "layers": ["block2", "block4"], "start": "block1"}
    with pytest.raises(ConfigError, match="before the first V-V block block3"):
        DPAM(_backbone(vit), layers=("block2", "block4"), start="block3")
    with pytest.raises(ConfigError, match="block1' .. 'block4"):
        DPAM(_backbone(vit), layers=("block5",))
    with pytest.raises(ConfigError, match="at least one"):
        DPAM(_backbone(vit), layers="")


def test_through_the_backbone_on_a_random_vit_b32():
    backbone = BACKBONES.create("ViT-B-32", weights="random", input_size=64, extras={DPAM: {}})
    assert isinstance(backbone.extras["dpam"], DPAM)
    assert backbone.extra_channels == {"dpam.block3": 768, "dpam.block6": 768, "dpam.block9": 768,
                                       "dpam.block12": 768, "dpam.embedding": 512}
    assert backbone.identity()["extras"] == {"dpam": {"layers": ["block3", "block6", "block9", "block12"],
                                                      "start": "block3"}}
    rng = np.random.default_rng(0)
    x = backbone.preprocess([rng.integers(0, 256, (70, 60, 3), dtype=np.uint8) for _ in range(2)])
    features = backbone.features(x)
    assert features.layers["dpam.block12"].shape == (2, 768, 2, 2)
    assert features.layers["dpam.embedding"].shape == (2, 512, 1, 1)
    visual = backbone.model.visual
    with torch.no_grad():
        want, last = vv_path_by_hand(visual, x, start=3)
    for j in (3, 6, 9, 12):
        torch.testing.assert_close(features.layers[f"dpam.block{j}"], _as_map(want[j], 2), rtol=1e-4, atol=1e-4)
    # the ordinary stream is untouched: block12 and CLIP's embedding (ln_post, then proj) agree with it
    torch.testing.assert_close(features.layers["block12"], _as_map(last, 2), rtol=1e-4, atol=1e-4)
    clip_embedding = torch.nn.functional.normalize(visual.ln_post(last[:, 0]) @ visual.proj, dim=-1)
    torch.testing.assert_close(features.embedding, clip_embedding, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(features.layers["dpam.embedding"][:, :, 0, 0], last[:, 0] @ visual.proj,
                               rtol=1e-4, atol=1e-4)
