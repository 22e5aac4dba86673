"""A new CLIP method with an extra backbone output is one folder and zero edits elsewhere.

This module plays the method's folder: it defines, outside ``bench.methods``, a tiny method and its
``BackboneExtra``, registers the method with ``METHODS.register`` and runs it on a tiny random
open_clip ViT. The extra is computed in the backbone's own pass (from the embedding that pass gives,
no second forward), travels with the features, is cached with them under a key that holds its
options, and the method scores from it, through the API and through ``bench run``.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from bench.backbones.openclip import OpenClipBackbone
from bench.cache import FeatureCache, encode
from bench.errors import ConfigError
from bench.interfaces import Backbone, BackboneExtra, Method, MethodInfo
from bench.records import FeatureSet, ScoreOutput
from bench.registry import BACKBONES, METHODS
from clip_helpers import bench_run
from fakes import registered_tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")

ARCH = "bench-test-plugin-vit"
METHOD = "tiny-extra"


class ScaledEmbedding(BackboneExtra):
    """The plugin's extra: ``scale`` times the unnormalised image embedding of the backbone's pass."""

    name = "scaled_embedding"
    calls = 0  # batches computed, over all instances

    def __init__(self, backbone: OpenClipBackbone, scale: float = 1.0) -> None:
        self.scale = float(scale)
        self.channels = {"scaled_embedding": backbone.embedding_dim}

    def identity(self) -> dict[str, object]:
        return {"scale": self.scale}

    def compute(self, x: torch.Tensor, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        ScaledEmbedding.calls += 1
        return {"scaled_embedding": self.scale * embedding[:, :, None, None]}


class TinyExtraMethod(Method):
    """Map: the norm of the last block's patch tokens; image score: the norm of the extra."""

    def __init__(self, scale: float = 2.0) -> None:
        self.scale = float(scale)
        self.info = MethodInfo(name=METHOD, paper="a test plugin", arxiv="", default_backbone=ARCH)

    def backbone_options(self, backbone: str) -> dict[str, object]:
        return {"extras": {ScaledEmbedding: {"scale": self.scale}}}

    def bind(self, backbone: Backbone) -> None:
        if "scaled_embedding" not in backbone.extra_channels:
            raise ConfigError(f"{METHOD} needs the scaled_embedding extra")
        self.last = list(backbone.channels)[-1]

    def score(self, features: FeatureSet, reference: FeatureSet | None = None) -> ScoreOutput:
        maps = features.layers[self.last].norm(dim=1)
        return ScoreOutput(features.layers["scaled_embedding"].flatten(1).norm(dim=1), maps)


@pytest.fixture
def plugin(monkeypatch):
    """The tiny architecture in open_clip, a backbone entry for it and the method registered, for one test."""
    METHODS.names(), BACKBONES.names()  # load the built-in plugins before the registries are copied
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # restored after the test
    monkeypatch.setattr(BACKBONES, "_entries", dict(BACKBONES._entries))
    with registered_tiny_vit(ARCH, embed_dim=16, width=32, layers=2, text_width=16, text_heads=1):
        BACKBONES.register(ARCH, "a tiny random open_clip ViT")(functools.partial(OpenClipBackbone, ARCH))
        METHODS.register(METHOD, "a method with a backbone extra, defined in a test module")(TinyExtraMethod)
        yield


def _pixels(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


def _backbone(method: Method) -> Backbone:
    return BACKBONES.create(ARCH, weights="random", **method.backbone_options(ARCH))


def test_the_extra_is_computed_in_the_backbones_pass_and_cached(plugin, tmp_path):
    method = METHODS.create(METHOD, scale=2.0)
    backbone = _backbone(method)
    method.bind(backbone)
    assert backbone.extra_channels == {"scaled_embedding": 16} and "scaled_embedding" not in backbone.channels
    assert backbone.identity()["extras"] == {"scaled_embedding": {"scale": 2.0}}

    ScaledEmbedding.calls = 0
    images, features = encode(backbone, _pixels(3), 2, FeatureCache(tmp_path, backbone))
    assert ScaledEmbedding.calls == 2  # once per batch of the backbone's pass
    # the backbone's own (normalised) embedding and the extra come from the same forward
    extra = features.layers["scaled_embedding"].flatten(1)
    torch.testing.assert_close(torch.nn.functional.normalize(extra, dim=-1), features.embedding)
    with torch.no_grad():
        direct = backbone.model.encode_image(images)
    torch.testing.assert_close(extra, 2.0 * direct, rtol=1e-5, atol=1e-6)
    out = method.score(features)
    assert out.maps.shape == (3, 4, 4) and torch.equal(out.image_scores, extra.norm(dim=1))

    # a second backbone with the same options reads everything from the cache: no extra computed
    again = _backbone(METHODS.create(METHOD, scale=2.0))
    cache = FeatureCache(tmp_path, again)
    _, cached = encode(again, _pixels(3), 2, cache)
    assert ScaledEmbedding.calls == 2 and cache.hits == 3
    assert torch.equal(cached.layers["scaled_embedding"], features.layers["scaled_embedding"])

    # the extra's options are part of the cache key: another scale is computed afresh
    other = _backbone(METHODS.create(METHOD, scale=3.0))
    cache = FeatureCache(tmp_path, other)
    assert cache.fingerprint != FeatureCache(tmp_path, backbone).fingerprint
    encode(other, _pixels(3), 2, cache)
    assert cache.hits == 0 and ScaledEmbedding.calls == 4


def test_bench_run_with_the_plugin(plugin, synthetic_tiles, tmp_path):
    from bench.tracking import open_store

    result = bench_run(METHOD, synthetic_tiles, tmp_path / "out", "--backbone", ARCH).output
    units = open_store(tmp_path / "out").units()
    assert list(units.method.unique()) == [METHOD], result


def test_extras_must_be_backbone_extra_classes(plugin):
    with pytest.raises(ConfigError, match="not a BackboneExtra class"):
        BACKBONES.create(ARCH, weights="random", extras={"scaled_embedding": {}})
    with pytest.raises(ConfigError, match="mapping"):
        BACKBONES.create(ARCH, weights="random", extras=[ScaledEmbedding])
